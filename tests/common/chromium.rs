//! What the stories in headless Chromium (`browser`, `desktop_qgis`) share: Debian's Chromium
//! and npm `playwright-core` (`e2e/browser`, installed from its lock file when missing), the
//! directory their screenshots land in, and a script of `e2e/browser` run by node as one of the
//! story's processes, its output shown line by line as it runs.
//!
//! A script prints `ok <step>` lines, and `PASSED` last, or `FAILED <step>: <reason>`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::say;
use super::stack::{Deadline, Proc};

/// Chromium (`$ATELIER_CHROMIUM`, by default `/usr/bin/chromium`), asserted to be there, with
/// `e2e/browser/node_modules` installed: what `ATELIER_PEERS=1` needs for a browser story.
pub fn chromium() -> PathBuf {
    let chromium = PathBuf::from(
        std::env::var("ATELIER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()),
    );
    assert!(
        chromium.is_file(),
        "ATELIER_PEERS=1 but {} is missing (apt-get install -y chromium; .ci/test.sh does)",
        chromium.display()
    );
    ensure_playwright();
    chromium
}

/// `e2e/browser`, where the scripts and their `node_modules` are.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/browser")
}

/// Installs `e2e/browser/node_modules` (`npm ci`, from the lock file) when missing.
fn ensure_playwright() {
    let dir = scripts_dir();
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("npm (ATELIER_PEERS=1 needs node and npm for e2e/browser)");
    assert!(status.success(), "npm ci in e2e/browser failed");
}

/// `<target>/test-output/<name>` (`$CARGO_TARGET_DIR` or `./target`), emptied.
pub fn output_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-output").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the output directory");
    dir
}

/// Whether `path` holds a PNG image of more than `min_bytes`.
pub fn is_png(path: &Path, min_bytes: usize) -> bool {
    std::fs::read(path)
        .is_ok_and(|bytes| bytes.len() > min_bytes && bytes.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// A script of `e2e/browser` running under node, process `name` of the story.
pub struct Script {
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Script {
    /// Runs `node` (`Command::new("node")` with the script and its environment) in
    /// `e2e/browser`, in a process group of its own, with HOME and TMPDIR the story's `dir`
    /// (Chromium's profile and caches there), stderr to `<dir>/<name>.stderr.log`, and each line
    /// of its output said as `<name>: <line>`; the process goes into `procs` as `name`.
    pub fn spawn(
        name: &str,
        mut node: Command,
        dir: &Path,
        procs: &mut BTreeMap<String, Proc>,
    ) -> Script {
        let log = dir.join(format!("{name}.stderr.log"));
        node.current_dir(scripts_dir())
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .process_group(0);
        let mut child = node.spawn().expect("node (ATELIER_PEERS=1 needs node)");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let (lines, name) = (lines.clone(), name.to_owned());
            let stdout = child.stdout.take().expect("piped stdout");
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    say(format!("{name}: {line}"));
                    lines.lock().unwrap().push(line);
                }
            })
        };
        procs.insert(name.to_owned(), Proc { child, log });
        Script {
            name: name.to_owned(),
            lines,
            reader: Some(reader),
        }
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How the script exited, once it has.
    pub fn exited(&self, procs: &mut BTreeMap<String, Proc>) -> Option<ExitStatus> {
        procs.get_mut(&self.name).expect("the script").exited()
    }

    /// Waits (within `deadline`) until the script exits and its output is read: how it exited
    /// and every line it printed.
    pub async fn finish(
        mut self,
        procs: &mut BTreeMap<String, Proc>,
        deadline: &Deadline,
    ) -> (ExitStatus, Vec<String>) {
        let status = loop {
            if let Some(status) = self.exited(procs) {
                break status;
            }
            deadline.tick(format!("{} running", self.name)).await;
        };
        self.join();
        (status, self.lines())
    }

    /// Waits until the script's output is read to its end.
    pub fn join(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the output reader");
        }
    }
}

/// Asserts that `what` (a script) succeeded with `PASSED` last, naming its `FAILED` line if not.
pub fn assert_passed(what: &str, status: ExitStatus, lines: &[String]) {
    assert!(
        status.success(),
        "{what} failed ({status}): {}",
        lines
            .iter()
            .find(|l| l.starts_with("FAILED"))
            .map_or("no FAILED line", String::as_str)
    );
    assert_eq!(lines.last().map(String::as_str), Some("PASSED"), "{what}");
}
