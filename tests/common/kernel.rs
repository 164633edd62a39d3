//! A Jupyter kernel of a real server, reached through the proxy as a browser reaches it: create
//! one with the server's REST API (`POST /user/<user>/api/kernels`), then run cells over its
//! WebSocket (`/user/<user>/api/kernels/<id>/channels`, Jupyter messaging protocol 5.3) and get
//! what the cell printed and returned, or the exception it raised.

use std::fmt;
use std::time::Duration;

use atelier::store::tokens::generate_token;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Bound of the kernel's creation and of the WebSocket's opening.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The exception a cell raised (its `error` message: `ename`, `evalue`, and the traceback's
/// lines without their ANSI colours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelError {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.ename, self.evalue)?;
        for line in &self.traceback {
            write!(f, "\n{line}")?;
        }
        Ok(())
    }
}

/// A kernel of `user`'s default server, through the proxy at `127.0.0.1:<proxy_port>`.
pub struct Kernel {
    pub proxy_port: u16,
    pub user: String,
    pub token: String,
    pub id: String,
}

impl Kernel {
    /// Starts a `python3` kernel on `user`'s default server with `token`.
    pub async fn start(proxy_port: u16, user: &str, token: &str) -> Kernel {
        let url = format!("http://127.0.0.1:{proxy_port}/user/{user}/api/kernels");
        let request = http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("authorization", format!("token {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"name": "python3"}).to_string(),
            )))
            .expect("request");
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let exchange = async {
            let resp = client.request(request).await.expect("POST api/kernels");
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("POST {url}: no answer within {REQUEST_TIMEOUT:?}"));
        assert_eq!(status, 201, "POST {url}: {body}");
        let model: Value = serde_json::from_str(&body).expect("a kernel model");
        Kernel {
            proxy_port,
            user: user.to_owned(),
            token: token.to_owned(),
            id: model["id"].as_str().expect("kernel id").to_owned(),
        }
    }

    /// Runs `code` as one cell (see [`execute`]).
    pub async fn run(&self, code: &str) -> Result<String, KernelError> {
        execute(self.proxy_port, &self.user, &self.token, &self.id, code).await
    }
}

/// Executes `code` on kernel `kernel` of `user`'s default server over its WebSocket through the
/// proxy, and waits until the kernel is idle again: what the cell printed on stdout followed by
/// the `text/plain` of its result (either may be empty), or the exception it raised. Panics when
/// the WebSocket fails or the cell takes more than 120 s.
pub async fn execute(
    proxy_port: u16,
    user: &str,
    token: &str,
    kernel: &str,
    code: &str,
) -> Result<String, KernelError> {
    let url = format!("ws://127.0.0.1:{proxy_port}/user/{user}/api/kernels/{kernel}/channels");
    let mut request = url.as_str().into_client_request().expect("ws request");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("token {token}")).expect("header"),
    );
    let (mut ws, resp) =
        tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("kernel WebSocket: no answer")
            .unwrap_or_else(|e| panic!("kernel WebSocket {url}: {e:?}"));
    assert_eq!(resp.status().as_u16(), 101);
    let session = generate_token()[..32].to_owned();
    let msg_id = generate_token()[..32].to_owned();
    let request = json!({
        "header": {
            "msg_id": msg_id,
            "username": user,
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": chrono::Utc::now().to_rfc3339(),
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": false,
            "store_history": false,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": true,
        },
        "channel": "shell",
        "buffers": [],
    });
    ws.send(Message::text(request.to_string()))
        .await
        .expect("send execute_request");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (mut stdout, mut result, mut error) = (String::new(), String::new(), None);
    let (mut replied, mut idle) = (false, false);
    let mut seen = Vec::new();
    // The reply (shell) and the outputs (iopub) arrive in any order; the kernel is done with
    // the cell when both the reply and iopub's `idle` for it are in.
    while !(replied && idle) {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => panic!("kernel WebSocket broke: {e}; seen {seen:?}"),
            Ok(None) => panic!("kernel WebSocket closed; seen {seen:?}"),
            Err(_) => panic!("cell not done within 120 s: {code}\nseen {seen:?}"),
        };
        let Message::Text(text) = message else {
            continue;
        };
        let msg: Value = serde_json::from_str(text.as_str()).expect("a JSON kernel message");
        let msg_type = msg["header"]["msg_type"].as_str().unwrap_or("").to_owned();
        let channel = msg["channel"].as_str().unwrap_or("").to_owned();
        seen.push(format!("{channel}/{msg_type}"));
        if msg["parent_header"]["msg_id"] != msg_id.as_str() {
            continue;
        }
        let content = &msg["content"];
        match (channel.as_str(), msg_type.as_str()) {
            ("iopub", "stream") if content["name"] == "stdout" => {
                stdout.push_str(content["text"].as_str().unwrap_or_default());
            }
            ("iopub", "execute_result") => {
                result = content["data"]["text/plain"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no text/plain in {msg}"))
                    .to_owned();
            }
            ("iopub", "error") => error = Some(kernel_error(content)),
            ("iopub", "status") if content["execution_state"] == "idle" => idle = true,
            ("shell", "execute_reply") => {
                replied = true;
                if content["status"] != "ok" && error.is_none() {
                    error = Some(kernel_error(content));
                }
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    match error {
        Some(e) => Err(e),
        None => Ok(format!("{stdout}{result}")),
    }
}

fn kernel_error(content: &Value) -> KernelError {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    KernelError {
        ename: text(&content["ename"]),
        evalue: text(&content["evalue"]),
        traceback: content["traceback"]
            .as_array()
            .map(|lines| lines.iter().map(|l| strip_ansi(&text(l))).collect())
            .unwrap_or_default(),
    }
}

/// `text` without its ANSI escape sequences (IPython colours its tracebacks).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
