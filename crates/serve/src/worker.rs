//! Worker threads: each owns a model, takes batches from its endpoint's bounded queue,
//! and answers every request of the batch. Model code never runs on the async runtime.
use crate::api::{Device, InferenceApi, StreamOutput};
use crate::config::EndpointConfig;
use crate::error::{panic_message, ApiError};
use crate::metrics::RouteMetrics;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Where a job's answer goes.
pub(crate) enum Reply<O> {
    /// One output.
    Once(oneshot::Sender<Result<O, ApiError>>),
    /// A stream of chunks; closed when the stream ends.
    Stream(mpsc::UnboundedSender<Result<O, ApiError>>),
}

impl<O> Reply<O> {
    /// Answers with an error (a stream gets it as its last item).
    fn fail(self, e: ApiError) {
        let _ = match self {
            Reply::Once(s) => s.send(Err(e)).is_ok(),
            Reply::Stream(s) => s.send(Err(e)).is_ok(),
        };
    }
}

/// One request waiting for a worker.
pub(crate) struct Job<I, O> {
    pub input: I,
    pub reply: Reply<O>,
    pub deadline: Instant,
}

impl<I, O> Job<I, O> {
    /// The client has gone or the deadline has passed: predicting it would be wasted work.
    fn abandoned(&self, now: Instant) -> bool {
        now >= self.deadline
            || match &self.reply {
                Reply::Once(s) => s.is_closed(),
                Reply::Stream(s) => s.is_closed(),
            }
    }
}

/// One worker's place in its endpoint's count of serving workers, which `/health` reads.
/// A worker serves from its first successful setup; it still serves while it sets up
/// again after a panic (requests wait in the queue meanwhile), and stops only when a
/// setup fails (error or panic), until one succeeds.
struct Serving {
    count: Arc<AtomicUsize>,
    counted: bool,
}

impl Serving {
    fn set(&mut self, serving: bool) {
        if serving != self.counted {
            if serving {
                self.count.fetch_add(1, Ordering::SeqCst);
            } else {
                self.count.fetch_sub(1, Ordering::SeqCst);
            }
            self.counted = serving;
        }
    }
}

impl Drop for Serving {
    /// A worker that has exited serves no more.
    fn drop(&mut self) {
        self.set(false);
    }
}

/// The sending side of an endpoint's queue.
pub(crate) struct Queue<I, O> {
    tx: Sender<Job<I, O>>,
    max_queue: usize,
    metrics: RouteMetrics,
}

/// Why a job was not queued.
pub(crate) enum Rejected {
    Full,
    Closed,
}

impl<I, O> Queue<I, O> {
    /// Queues the jobs of one request. The request is admitted while fewer than
    /// `max_queue` jobs wait, and then all of its jobs go in: a request is refused for
    /// the load it meets, never for its own size (which its parser bounds). The depth
    /// gauge is the count admission reads, so the two cannot disagree.
    pub fn submit(&self, jobs: Vec<Job<I, O>>) -> Result<(), Rejected> {
        let n = jobs.len() as i64;
        let max = self.max_queue as i64;
        let depth = self.metrics.queue_depth.inner();
        depth
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| (d < max).then_some(d + n))
            .map_err(|_| Rejected::Full)?;
        let mut left = n;
        for job in jobs {
            if self.tx.send(job).is_err() {
                self.metrics.queue_depth.dec_by(left);
                return Err(Rejected::Closed);
            }
            left -= 1;
        }
        Ok(())
    }
}

/// An endpoint's queue and its worker threads.
pub(crate) type Started<A> =
    (Queue<<A as InferenceApi>::Input, <A as InferenceApi>::Output>, Vec<std::thread::JoinHandle<()>>);

/// Starts the workers of one endpoint; returns its queue and the worker threads.
pub(crate) fn start<A: InferenceApi>(
    api: Arc<A>,
    config: &EndpointConfig,
    metrics: RouteMetrics,
    serving: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<Started<A>> {
    // Unbounded: `Queue::submit` bounds what waits, per request.
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut handles = Vec::new();
    for device in &config.devices {
        for n in 0..config.workers_per_device {
            let worker = Worker {
                api: Arc::clone(&api),
                device: *device,
                rx: rx.clone(),
                max_batch_size: config.max_batch_size,
                batch_timeout: config.batch_timeout,
                stream: config.stream,
                route: config.path.clone(),
                metrics: metrics.clone(),
                stopping: Arc::clone(&stopping),
            };
            let name = format!("volt-worker{}-{device}-{n}", config.path.replace('/', "-"));
            let serving = Serving { count: Arc::clone(&serving), counted: false };
            handles.push(std::thread::Builder::new().name(name).spawn(move || worker.run(serving))?);
        }
    }
    Ok((Queue { tx, max_queue: config.max_queue, metrics }, handles))
}

struct Worker<A: InferenceApi> {
    api: Arc<A>,
    device: Device,
    rx: Receiver<Job<A::Input, A::Output>>,
    max_batch_size: usize,
    batch_timeout: Duration,
    stream: bool,
    route: String,
    metrics: RouteMetrics,
    stopping: Arc<AtomicBool>,
}

impl<A: InferenceApi> Worker<A> {
    /// Sets up until it succeeds; `None` when the server stops first.
    fn setup(&self, serving: &mut Serving) -> Option<A::Model> {
        let mut delay = Duration::from_millis(100);
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.api.setup(self.device))) {
                Ok(Ok(model)) => {
                    serving.set(true);
                    return Some(model);
                }
                Ok(Err(e)) => {
                    tracing::error!(route = %self.route, device = %self.device, "setup failed: {e}")
                }
                Err(p) => tracing::error!(route = %self.route, "setup panicked: {}", panic_message(&*p)),
            }
            serving.set(false);
            // Retry with backoff, in slices so that a stopping server need not wait it out.
            let retry_at = Instant::now() + delay;
            while Instant::now() < retry_at {
                if self.stopping.load(Ordering::SeqCst) {
                    return None;
                }
                std::thread::sleep((retry_at - Instant::now()).min(Duration::from_millis(50)));
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    fn take(&self) -> Option<Job<A::Input, A::Output>> {
        let job = self.rx.recv().ok()?;
        self.metrics.queue_depth.dec();
        Some(job)
    }

    fn gather(&self, first: Job<A::Input, A::Output>) -> Vec<Job<A::Input, A::Output>> {
        let mut batch = vec![first];
        let deadline = Instant::now() + self.batch_timeout;
        while batch.len() < self.max_batch_size {
            let next = match self.rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        None
                    } else {
                        self.rx.recv_timeout(deadline - now).ok()
                    }
                }
            };
            let Some(job) = next else { break };
            self.metrics.queue_depth.dec();
            batch.push(job);
        }
        batch
    }

    fn run(self, mut serving: Serving) {
        let Some(mut model) = self.setup(&mut serving) else { return };
        while let Some(first) = self.take() {
            let now = Instant::now();
            let batch: Vec<_> = self.gather(first).into_iter().filter(|j| !j.abandoned(now)).collect();
            if batch.is_empty() {
                continue;
            }
            self.metrics.batch_size.observe(batch.len() as f64);
            self.metrics.predict_calls.inc();
            let started = Instant::now();
            let panicked = if self.stream {
                self.predict_stream(&mut model, batch)
            } else {
                self.predict(&mut model, batch)
            };
            self.metrics.worker_busy.inc_by(started.elapsed().as_secs_f64());
            if panicked {
                // The model may be left half-updated: build a fresh one before the next batch.
                drop(model);
                let Some(fresh) = self.setup(&mut serving) else { return };
                model = fresh;
            }
        }
    }

    /// Returns whether user code panicked.
    fn predict(&self, model: &mut A::Model, batch: Vec<Job<A::Input, A::Output>>) -> bool {
        let n = batch.len();
        let (inputs, replies): (Vec<A::Input>, Vec<Reply<A::Output>>) =
            batch.into_iter().map(|j| (j.input, j.reply)).unzip();
        let result = catch_unwind(AssertUnwindSafe(|| self.api.predict(model, inputs)));
        let (outcome, panicked) = match result {
            Ok(Ok(outputs)) if outputs.len() == n => (Ok(outputs), false),
            Ok(Ok(outputs)) => (
                Err(ApiError::Internal(format!("predict returned {} outputs for {n} inputs", outputs.len()))),
                false,
            ),
            Ok(Err(e)) => (Err(e), false),
            Err(p) => (Err(ApiError::Internal(format!("predict panicked: {}", panic_message(&*p)))), true),
        };
        match outcome {
            Ok(outputs) => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    if let Reply::Once(s) = reply {
                        let _ = s.send(Ok(output));
                    }
                }
            }
            Err(e) => {
                for reply in replies {
                    reply.fail(e.clone());
                }
            }
        }
        panicked
    }

    /// Returns whether user code panicked.
    fn predict_stream(&self, model: &mut A::Model, batch: Vec<Job<A::Input, A::Output>>) -> bool {
        let mut inputs = Vec::with_capacity(batch.len());
        let mut senders = Vec::with_capacity(batch.len());
        for job in batch {
            match job.reply {
                Reply::Stream(s) => {
                    inputs.push(job.input);
                    senders.push(Some(s));
                }
                once @ Reply::Once(_) => {
                    once.fail(ApiError::Internal("streaming endpoint got a plain request".into()))
                }
            }
        }
        let mut out = StreamOutput { senders };
        let result = catch_unwind(AssertUnwindSafe(|| self.api.predict_stream(model, inputs, &mut out)));
        let (error, panicked) = match result {
            Ok(Ok(())) => (None, false),
            Ok(Err(e)) => (Some(e), false),
            Err(p) => {
                (Some(ApiError::Internal(format!("predict_stream panicked: {}", panic_message(&*p)))), true)
            }
        };
        if let Some(e) = error {
            for s in out.senders.iter().flatten() {
                let _ = s.send(Err(e.clone()));
            }
        }
        panicked
    }
}
