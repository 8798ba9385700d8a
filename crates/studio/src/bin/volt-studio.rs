//! `volt-studio [--host HOST] [--port PORT]`: the control plane on its own, without
//! libtorch, so that it stays small while it waits (`volt job` starts this binary in the
//! background when it lies next to `volt`; `volt studio up` is the same in the volt binary).
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let (mut host, mut port) = ("127.0.0.1".to_owned(), 8700u16);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--host", Some(h)) => host = h,
            ("--port", Some(p)) => match p.parse() {
                Ok(p) => port = p,
                Err(_) => return usage(&format!("--port {p}: not a port (0 to 65535)")),
            },
            (other, _) => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let home = match volt_studio::Home::at(volt_studio::volt_home()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}: {e}", volt_studio::volt_home().display());
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
            Ok(l) => l,
            Err(e) => return usage(&format!("--host {host} --port {port}: {e}")),
        };
        match volt_studio::serve(home, listener, |url| println!("studio listening on {url}")).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn usage(why: &str) -> ExitCode {
    eprintln!("error: {why}\nusage: volt-studio [--host HOST] [--port PORT]");
    ExitCode::from(2)
}
