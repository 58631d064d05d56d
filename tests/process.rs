//! The real `producer` and `consumer` binaries as child processes: started
//! with flags, killed with SIGKILL or stopped with SIGTERM, restarted with
//! the same flags. Their output goes to a log file the test prints on failure.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the running test executable
/// (`target/<profile>/deps/main-…` → `target/<profile>/<name>`), or in
/// `BARISTA_BIN_DIR` when set: worktrees that share one `CARGO_TARGET_DIR`
/// overwrite each other's `target/<profile>/<name>` (only the test
/// executables carry a hash), so a test run can point at its own copies.
/// `cargo test --workspace` builds them (the producer and consumer packages
/// have integration tests, which makes cargo build their binaries).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = match std::env::var_os("BARISTA_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_owned(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins; \
         cargo test --workspace builds them)",
        path.display()
    );
    path
}

/// One binary run as a child process, restartable with the same arguments.
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    cwd: Option<PathBuf>,
    /// Extra environment variables, on every start.
    env: Vec<(OsString, OsString)>,
    child: Option<Child>,
    /// How many times it was started.
    pub starts: usize,
}

impl Proc {
    /// The program's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts `name` (a workspace binary) with `args`; stdout and stderr are
    /// appended to `log`.
    pub fn start<I, S>(name: &str, args: I, log: &Path) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::start_program(binary(name), args, log, None)
    }

    /// Like [`Proc::start`], with extra environment variables (kept for restarts).
    pub fn start_with_env<I, S>(name: &str, args: I, env: &[(&str, &str)], log: &Path) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::start_program_with_env(binary(name), args, env, log, None)
    }

    /// Like [`Proc::start_program`], with extra environment variables (kept for restarts).
    pub fn start_program_with_env<I, S>(
        program: PathBuf,
        args: I,
        env: &[(&str, &str)],
        log: &Path,
        cwd: Option<&Path>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut p = Self::new(program, args, log, cwd);
        p.env = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        p.spawn();
        p
    }

    /// Starts any program, in `cwd` if given; output appended to `log`.
    pub fn start_program<I, S>(program: PathBuf, args: I, log: &Path, cwd: Option<&Path>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut p = Self::new(program, args, log, cwd);
        p.spawn();
        p
    }

    /// Not started yet.
    fn new<I, S>(program: PathBuf, args: I, log: &Path, cwd: Option<&Path>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Proc {
            name: program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            program,
            args: args.into_iter().map(Into::into).collect(),
            log: log.to_owned(),
            cwd: cwd.map(Path::to_owned),
            env: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(&self.program);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let child = cmd
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info,rdkafka=warn".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        self.child = Some(child);
        self.starts += 1;
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no drain, no cleanup, like a power cut of the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on Unix
            let _ = c.wait();
        }
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// SIGTERM, then waits up to `timeout` for it to exit. A process just started may not
    /// have installed its SIGTERM handler yet (the signal would kill it undrained, as it
    /// would any program): the signal is sent once the kernel shows the handler in place.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        while !catches_sigterm(c.id()) && Instant::now() < deadline {
            if c.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", c.id());
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Some(status)` once it exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait"))
    }

    /// Panics with the log tail if the process exited on its own.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(s) = self.exited() {
            panic!("{} exited with {s}\n{}", self.name, self.log_tail(60));
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            all[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether process `pid` catches SIGTERM (`SigCgt` in `/proc/PID/status`, bit 15 - 1).
fn catches_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << 14) != 0)
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
