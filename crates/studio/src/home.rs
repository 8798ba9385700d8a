//! The control plane's home (`$VOLT_HOME`, default `~/.volt`): the store, the token
//! clients authenticate with, the lock that keeps a second control plane off the same
//! store, and `studio.json`, which tells the CLI where the running one listens.
use serde::{Deserialize, Serialize};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use volt_formats::atomic::{write_atomic, write_atomic_mode};

/// The folder: `$VOLT_HOME`, else `~/.volt`.
pub fn volt_home() -> PathBuf {
    match std::env::var_os("VOLT_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(".volt"), |h| PathBuf::from(h).join(".volt")),
    }
}

/// Where a running control plane listens (written when it is up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listening {
    /// Its base URL.
    pub url: String,
    /// Its process.
    pub pid: u32,
}

/// The files of a home.
#[derive(Clone, Debug)]
pub struct Home {
    /// The folder.
    pub dir: PathBuf,
}

impl Home {
    /// The home at `dir`, created if missing.
    pub fn at(dir: PathBuf) -> std::io::Result<Home> {
        std::fs::create_dir_all(&dir)?;
        // Absolute: nodes (Slurm's) write into it from folders of their own.
        let dir = std::path::absolute(&dir)?;
        Ok(Home { dir })
    }
    /// The SQLite store.
    pub fn store(&self) -> PathBuf {
        self.dir.join("studio.db")
    }
    /// The control plane's own log, when the CLI starts it in the background.
    pub fn log(&self) -> PathBuf {
        self.dir.join("studio.log")
    }
    fn listening_file(&self) -> PathBuf {
        self.dir.join("studio.json")
    }

    /// The API token: `$VOLT_STUDIO_TOKEN`, else the home's `token` file, made (readable
    /// by its owner alone) the first time.
    pub fn token(&self) -> std::io::Result<String> {
        if let Some(t) = std::env::var("VOLT_STUDIO_TOKEN").ok().filter(|t| !t.is_empty()) {
            return Ok(t);
        }
        let path = self.dir.join("token");
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        write_atomic_mode(&path, token.as_bytes(), 0o600)?;
        Ok(token)
    }

    /// Where the running control plane said it listens, if it did.
    pub fn listening(&self) -> Option<Listening> {
        serde_json::from_slice(&std::fs::read(self.listening_file()).ok()?).ok()
    }

    /// Says where this control plane listens.
    pub fn set_listening(&self, l: &Listening) -> std::io::Result<()> {
        let json = serde_json::to_vec(l).map_err(std::io::Error::other)?;
        write_atomic(&self.listening_file(), &json)
    }

    /// Takes the home's lock for this process's life, or says which process holds it.
    pub fn lock(&self) -> std::io::Result<std::fs::File> {
        let path = self.dir.join("studio.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder =
                self.listening().map_or_else(String::new, |l| format!(" (pid {}, {})", l.pid, l.url));
            return Err(std::io::Error::other(format!(
                "another control plane runs on {}{holder}",
                self.dir.display()
            )));
        }
        Ok(file)
    }
}
