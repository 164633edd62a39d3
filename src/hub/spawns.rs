//! Progress of the spawns this hub process drives, for `GET .../server/progress`.
//!
//! In memory on purpose: the durable truth (pending, ready, URL) is the server row in the
//! store; a hub that did not drive a spawn reports progress from the row alone.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::backend::ProgressEvent;

/// Progress channels, keyed by server id.
#[derive(Default)]
pub struct Spawns {
    inner: Mutex<HashMap<i64, Channel>>,
}

struct Channel {
    history: Vec<ProgressEvent>,
    sender: broadcast::Sender<ProgressEvent>,
}

impl Spawns {
    /// Starts (or restarts) the progress of server `id`.
    pub fn begin(&self, id: i64) {
        let (sender, _) = broadcast::channel(64);
        self.lock().insert(
            id,
            Channel {
                history: Vec::new(),
                sender,
            },
        );
    }

    /// Records and broadcasts an event of server `id`.
    pub fn publish(&self, id: i64, event: ProgressEvent) {
        let mut map = self.lock();
        if let Some(ch) = map.get_mut(&id) {
            ch.history.push(event.clone());
            let _ = ch.sender.send(event);
        }
    }

    /// The events so far and a receiver of the next ones, if this process drives server `id`.
    pub fn subscribe(
        &self,
        id: i64,
    ) -> Option<(Vec<ProgressEvent>, broadcast::Receiver<ProgressEvent>)> {
        self.lock()
            .get(&id)
            .map(|ch| (ch.history.clone(), ch.sender.subscribe()))
    }

    /// Forgets server `id` (after its spawn ended and was reported).
    pub fn end(&self, id: i64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Channel>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
