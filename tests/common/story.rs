//! What the real-peer stories (`data_sources`, `dask_gateway`, `dask_local`) do when their world
//! is dropped: stop its processes and any leftover, print every log when the story failed, and
//! keep its directory then (or with `ATELIER_E2E_KEEP`), remove it otherwise.

use std::collections::BTreeMap;
use std::path::Path;

use super::say;
use super::stack::{Proc, kill_leftovers};

/// Winds up story `story` of directory `dir`: kills `procs`, then every leftover process of
/// `dir`; when the thread panics, prints the last `tail` lines of each process's log, of `extra`
/// (logs of peers the caller already stopped, by name) and of each server log under
/// `dir/state/logs`.
pub fn wind_up(
    story: &str,
    dir: &Path,
    procs: &mut BTreeMap<String, Proc>,
    extra: Vec<(String, String)>,
    tail: usize,
) {
    let failed = std::thread::panicking();
    for proc in procs.values_mut() {
        proc.kill();
    }
    let leftovers = kill_leftovers(&dir.to_string_lossy());
    if failed {
        say(format!(
            "==== {story} failed: logs under {} ====",
            dir.display()
        ));
        let mut logs: Vec<(String, String)> = procs
            .iter()
            .map(|(name, p)| (name.clone(), p.log()))
            .collect();
        logs.extend(extra);
        if let Ok(entries) = std::fs::read_dir(dir.join("state/logs")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                logs.push((e.path().display().to_string(), text));
            }
        }
        for (name, text) in logs {
            let last: Vec<&str> = text.lines().rev().take(tail).collect();
            say(format!("---- {name} (last {tail} lines) ----"));
            for line in last.iter().rev() {
                say(line);
            }
        }
    }
    if leftovers > 0 {
        say(format!("{story}: killed {leftovers} leftover process(es)"));
    }
    if failed || std::env::var_os("ATELIER_E2E_KEEP").is_some() {
        say(format!("{story}: kept {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The events of a JupyterHub progress stream (server-sent events, `data: {...}`) read from
/// `body` until one with `ready` or `failed` (returned with the others), each event's raw data
/// handed to `seen` first. Panics, naming the events so far, when the stream breaks, ends early
/// or has no final event by `deadline`.
pub async fn progress_events<B>(
    mut body: B,
    deadline: tokio::time::Instant,
    mut seen: impl FnMut(&str),
) -> Vec<serde_json::Value>
where
    B: hyper::body::Body<Data = hyper::body::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    let (mut buffer, mut events) = (String::new(), Vec::new());
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => panic!("progress stream broke: {e}; events: {events:?}"),
            Ok(None) => panic!("progress stream ended before ready/failed: {events:?}"),
            Err(_) => panic!("progress: no final event by the deadline: {events:?}"),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buffer.find("\n\n") {
            let chunk: String = buffer.drain(..end + 2).collect();
            for line in chunk.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                seen(data);
                let event: serde_json::Value =
                    serde_json::from_str(data.trim()).expect("event JSON");
                let over = event["ready"] == true || event["failed"] == true;
                events.push(event);
                if over {
                    return events;
                }
            }
        }
    }
}
