//! Bodies: the request body handed to the upstream, which can be taken back while unread (to
//! retry a request whose upstream refused the connection), and the response body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body_util::{Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// What the proxy answers with: the upstream's streamed body, or one it made itself.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// A request body streamed to the upstream. Until the client first polls it, the body stays
/// in a slot shared with the proxy, which takes it back after a failed connect.
pub(crate) struct RequestBody {
    state: State,
}

enum State {
    Shared(Arc<Mutex<Option<Incoming>>>),
    Owned(Incoming),
    Done,
}

/// The proxy's handle on an unread [`RequestBody`].
pub(crate) struct Reclaim(Arc<Mutex<Option<Incoming>>>);

impl Reclaim {
    /// The body, if the upstream client never started reading it.
    pub(crate) fn take(self) -> Option<Incoming> {
        self.0.lock().expect("body lock poisoned").take()
    }
}

impl RequestBody {
    /// A body that can be taken back while unread.
    pub(crate) fn reclaimable(body: Incoming) -> (RequestBody, Reclaim) {
        let slot = Arc::new(Mutex::new(Some(body)));
        (
            RequestBody {
                state: State::Shared(slot.clone()),
            },
            Reclaim(slot),
        )
    }

    /// A body handed over for good.
    pub(crate) fn owned(body: Incoming) -> RequestBody {
        RequestBody {
            state: State::Owned(body),
        }
    }

    fn with_inner<T>(&self, f: impl FnOnce(Option<&Incoming>) -> T) -> T {
        match &self.state {
            State::Shared(slot) => f(slot.lock().expect("body lock poisoned").as_ref()),
            State::Owned(body) => f(Some(body)),
            State::Done => f(None),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let State::Shared(slot) = &self.state {
            let taken = slot.lock().expect("body lock poisoned").take();
            self.state = match taken {
                Some(body) => State::Owned(body),
                None => State::Done,
            };
        }
        match &mut self.state {
            State::Owned(body) => Pin::new(body).poll_frame(cx),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_inner(|b| b.is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_inner(|b| b.map_or_else(|| SizeHint::with_exact(0), Body::size_hint))
    }
}
