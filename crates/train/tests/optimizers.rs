//! volt's optimizers against libtorch's own (through tch's `nn::Optimizer`), and clipping.
use tch::{nn, Device, Kind, Tensor};
use volt_train::{optim::clip_gradients, ClipAlgorithm, Optimizer, OptimizerSpec};

/// libtorch's generator is process-global; the lock keeps seeding and drawing together.
fn problem(seed: i64) -> (nn::VarStore, Tensor, Tensor) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let _w = vs.root().randn("w", &[8, 3], 0.0, 1.0);
    let _b = vs.root().randn("b", &[3], 0.0, 1.0);
    let x = Tensor::randn([16, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([16, 3], (Kind::Float, Device::Cpu));
    (vs, x, y)
}

fn loss(vs: &nn::VarStore, x: &Tensor, y: &Tensor) -> Tensor {
    let v = vs.variables();
    (x.matmul(&v["w"]) + &v["b"]).tanh().mse_loss(y, tch::Reduction::Mean)
}

fn compare(spec: OptimizerSpec, reference: impl nn::OptimizerConfig) {
    let (ours, x, y) = problem(5);
    let (theirs, _, _) = problem(5);
    let mut opt = Optimizer::new(spec.clone(), &ours);
    let mut ref_opt = reference.build(&theirs, spec.lr()).expect("reference optimizer");
    for step in 0..25 {
        opt.zero_grad();
        loss(&ours, &x, &y).backward();
        opt.step().expect("step");
        ref_opt.backward_step(&loss(&theirs, &x, &y));
        let (a, b) = (ours.variables(), theirs.variables());
        for name in ["w", "b"] {
            let d = (&a[name] - &b[name]).abs().max().double_value(&[]);
            assert!(d <= 1e-6, "{spec:?} step {step}: {name} differs by {d}");
        }
    }
}

#[test]
fn sgd_with_momentum_nesterov_and_decay_matches_libtorch() {
    let spec =
        OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 1e-2 };
    compare(spec, nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 1e-2, nesterov: true });
    let spec =
        OptimizerSpec::Sgd { lr: 0.1, momentum: 0.5, dampening: 0.1, nesterov: false, weight_decay: 0.0 };
    compare(spec, nn::Sgd { momentum: 0.5, dampening: 0.1, wd: 0.0, nesterov: false });
}

#[test]
fn adam_and_adamw_match_libtorch() {
    let adam = OptimizerSpec::Adam { lr: 0.01, betas: (0.8, 0.99), eps: 1e-8, weight_decay: 1e-3 };
    compare(adam, nn::Adam { beta1: 0.8, beta2: 0.99, wd: 1e-3, eps: 1e-8, amsgrad: false });
    let adamw = OptimizerSpec::AdamW { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.1 };
    compare(adamw, nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.1, eps: 1e-8, amsgrad: false });
}

#[test]
fn clipping_by_norm_and_by_value() {
    let g1 = Tensor::from_slice(&[3.0f32, 0.0]);
    let g2 = Tensor::from_slice(&[0.0f32, 4.0]);
    let norm =
        clip_gradients(&[g1.shallow_clone(), g2.shallow_clone()], 1.0, ClipAlgorithm::Norm).expect("clip");
    assert_eq!(norm, Some(5.0));
    let total = (g1.square().sum(Kind::Float) + g2.square().sum(Kind::Float)).sqrt().double_value(&[]);
    assert!((total - 1.0).abs() < 1e-5, "clipped norm {total}");

    let g = Tensor::from_slice(&[-2.0f32, 0.5, 3.0]);
    clip_gradients(&[g.shallow_clone()], 1.0, ClipAlgorithm::Value).expect("clip");
    assert_eq!(Vec::<f32>::try_from(&g).expect("vec"), vec![-1.0, 0.5, 1.0]);

    let small = Tensor::from_slice(&[0.1f32]);
    clip_gradients(&[small.shallow_clone()], 1.0, ClipAlgorithm::Norm).expect("clip");
    assert!((small.double_value(&[0]) - 0.1).abs() < 1e-6, "below the threshold nothing changes");
}

#[test]
fn optimizer_state_round_trips() {
    let (vs, x, y) = problem(1);
    let mut opt = Optimizer::new(OptimizerSpec::adamw(0.01), &vs);
    for _ in 0..3 {
        opt.zero_grad();
        loss(&vs, &x, &y).backward();
        opt.step().expect("step");
    }
    let tensors: std::collections::HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    assert_eq!(keys, ["b.exp_avg", "b.exp_avg_sq", "b.step", "w.exp_avg", "w.exp_avg_sq", "w.step"]);
    let mut restored = Optimizer::new(OptimizerSpec::adamw(0.01), &vs);
    restored.load_state(&opt.scalars(), &tensors).expect("fits");
    assert_eq!(restored.steps(), 3);
    let mut wrong = Optimizer::new(OptimizerSpec::sgd(0.01), &vs);
    let problems = wrong.load_state(&opt.scalars(), &tensors).expect_err("class mismatch");
    assert!(problems[0].contains("checkpoint has AdamW, this run uses SGD"), "{problems:?}");
}

/// `b` gets no gradient for two steps, then joins: ours must still match libtorch's.
fn compare_with_a_late_parameter(spec: OptimizerSpec, reference: impl nn::OptimizerConfig, steps: usize) {
    let (ours, x, y) = problem(9);
    let (theirs, _, _) = problem(9);
    let mut opt = Optimizer::new(spec.clone(), &ours);
    let mut ref_opt = reference.build(&theirs, spec.lr()).expect("reference optimizer");
    let w_only =
        |vs: &nn::VarStore| (x.matmul(&vs.variables()["w"])).tanh().mse_loss(&y, tch::Reduction::Mean);
    for step in 0..steps {
        let (l_ours, l_theirs) = if step < 2 {
            (w_only(&ours), w_only(&theirs))
        } else {
            (loss(&ours, &x, &y), loss(&theirs, &x, &y))
        };
        opt.zero_grad();
        l_ours.backward();
        opt.step().expect("step");
        ref_opt.backward_step(&l_theirs);
        for name in ["w", "b"] {
            let d = (&ours.variables()[name] - &theirs.variables()[name]).abs().max().double_value(&[]);
            assert!(d <= 1e-6, "{spec:?} step {step}: {name} differs by {d}");
        }
    }
}

#[test]
fn a_parameter_that_gets_its_first_gradient_late_starts_its_momentum_then() {
    let spec =
        OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
    compare_with_a_late_parameter(
        spec,
        nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 0.0, nesterov: false },
        5,
    );
}

#[test]
fn adam_counts_steps_per_parameter() {
    compare_with_a_late_parameter(OptimizerSpec::adam(0.05), nn::Adam::default(), 4);
}
