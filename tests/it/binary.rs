//! The `jobbox` binary in a directory of its own: a config, a database and a
//! plugins directory; commands run against them, and `jobbox run` processes
//! started, signalled and killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobbox::store::Store;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::TestDb;

/// A directory with a config, a database and a plugins directory. The
/// database is `jobbox.db` in the directory, or, in the postgres pass, a
/// PostgreSQL database of its own (the config's `[store] url`).
pub struct Env {
    pub dir: TempDir,
    plugins: TempDir,
    pub db: TestDb,
}

impl Env {
    pub fn new(kinds: &[&str], extra: &str) -> Env {
        Env::listening_on("127.0.0.1:0", kinds, extra)
    }

    /// Like [`Env::new`], with the host's API on a port known before it
    /// starts (a free one), for the commands that ask the running host
    /// (`stats`, `jobs watch`); returns the API's address too.
    pub fn with_api(kinds: &[&str], extra: &str) -> (Env, SocketAddr) {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        (Env::listening_on(&addr.to_string(), kinds, extra), addr)
    }

    fn listening_on(listen: &str, kinds: &[&str], extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let plugins = jobbox_tests::plugin_dir_with(kinds);
        let db = TestDb::new(dir.path());
        let config = format!(
            "[store]\n{}\n[api]\nlisten = \"{listen}\"\n\n[host]\nplugins_dir = {:?}\npoll_interval = \"20ms\"\n{extra}",
            db.toml(),
            plugins.path()
        );
        std::fs::write(dir.path().join("jobbox.toml"), config).unwrap();
        Env { dir, plugins, db }
    }

    /// The host's plugins directory.
    pub fn plugins_dir(&self) -> &Path {
        self.plugins.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("jobbox.toml")
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobbox"));
        cmd.arg("--config")
            .arg(self.config())
            .current_dir(self.dir.path());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "jobbox {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Replaces the config with `toml`; returns the one-line error any
    /// command then fails with.
    pub fn config_error(&self, toml: &str) -> String {
        std::fs::write(self.config(), toml).unwrap();
        self.fails(&["jobs", "list"])
    }

    /// Runs a command that must fail with a one-line error; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        error_line(&format!("jobbox {args:?}"), self.run(args))
    }

    /// `jobbox enqueue echo --payload {} <args>`, which must fail; returns
    /// its one-line error.
    pub fn enqueue_fails(&self, args: &[&str]) -> String {
        let mut all = vec!["enqueue", "echo", "--payload", "{}"];
        all.extend_from_slice(args);
        self.fails(&all)
    }

    pub fn enqueue(&self, kind: &str, payload: &str) -> i64 {
        let out = self.ok(&["enqueue", kind, "--payload", payload, "--json"]);
        serde_json::from_str::<Value>(&out).unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    pub fn show(&self, id: i64) -> Value {
        serde_json::from_str(&self.ok(&["jobs", "show", &id.to_string(), "--json"])).unwrap()
    }

    /// Starts `jobbox run`, logging to a file (a pipe nobody reads until
    /// the end would fill up and stall the host).
    pub fn spawn_host(&self) -> Process {
        self.spawn_host_with(|cmd| {
            cmd.env("JOBBOX_LOG", "info");
        })
    }

    /// [`Env::spawn_host`] with the command adjusted by `configure` (more
    /// arguments after `run`, its environment).
    pub fn spawn_host_with(&self, configure: impl FnOnce(&mut Command)) -> Process {
        let log = self
            .dir
            .path()
            .join(format!("host-{}.log", fastrand_suffix()));
        let mut cmd = self.cmd();
        cmd.arg("run");
        configure(&mut cmd);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Process { child, log }
    }

    /// A store on the database the binary uses.
    pub fn store(&self) -> Arc<dyn Store> {
        self.db.open().store
    }

    /// `--db` for the database the binary uses (the config names it too).
    pub fn db_arg(&self) -> String {
        self.db.arg()
    }
}

/// The one-line error of `what`, a command that must have failed.
pub fn error_line(what: &str, out: Output) -> String {
    assert!(!out.status.success(), "{what} should have failed");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    lines[0].to_owned()
}

pub fn wait(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `jobbox run` process and the file its log goes to.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Process {
    /// A test that fails midway leaves no host running behind it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Process {
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()
    }

    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }

    /// Panics with the host's log if it has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("jobbox run exited early ({status}): {log}");
        }
    }
}

/// A suffix that makes each host's log file name unique.
pub fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn signal(host: &Process, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &host.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the host to exit; returns its status and log.
pub fn stderr_of(mut host: Process) -> (std::process::ExitStatus, String) {
    let status = host.child.wait().unwrap();
    (status, std::fs::read_to_string(&host.log).unwrap())
}
