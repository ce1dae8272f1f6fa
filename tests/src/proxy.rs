//! A TCP proxy in front of a local server that a test can freeze: after a given number of
//! bytes from the client it stops forwarding (the connection stays open, nothing is answered),
//! exactly like a storage endpoint that hangs mid-upload. Tests wait for [`Proxy::wait_frozen`]
//! (an observable state: the upload is under way and stalled) instead of sleeping, then act.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct State {
    /// Bytes forwarded client → server, over every connection.
    sent: AtomicU64,
    /// Freeze once `sent` would pass this many bytes (u64::MAX: never).
    freeze_after: AtomicU64,
    frozen: Mutex<bool>,
    thawed: Condvar,
    stop: AtomicBool,
}

/// The proxy; dropping it stops accepting and releases every frozen connection.
#[derive(Debug)]
pub struct Proxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<State>,
}

impl Proxy {
    /// Forward `127.0.0.1:<free port>` to `upstream` (`http://host:port` or `host:port`).
    pub fn start(upstream: &str) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            freeze_after: AtomicU64::new(u64::MAX),
            ..State::default()
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = st.clone();
                std::thread::spawn(move || pump(client, server, Some(up)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    /// Stop forwarding once `bytes` more bytes have gone from clients to the server.
    pub fn freeze_after(&self, bytes: u64) {
        let now = self.state.sent.load(Ordering::SeqCst);
        self.state
            .freeze_after
            .store(now.saturating_add(bytes), Ordering::SeqCst);
    }

    /// Wait until the proxy has frozen (a client sent past the limit), with a deadline.
    pub fn wait_frozen(&self, timeout: Duration) -> bool {
        crate::wait_until(timeout, Duration::from_millis(10), || {
            *self.state.frozen.lock().unwrap()
        })
    }

    /// Forward again, and never freeze unless asked again.
    pub fn thaw(&self) {
        self.state.freeze_after.store(u64::MAX, Ordering::SeqCst);
        let mut frozen = self.state.frozen.lock().unwrap();
        *frozen = false;
        self.state.thawed.notify_all();
    }

    /// Bytes forwarded from clients so far.
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.thaw();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Copy `from` → `to`; with `state`, count the bytes and hold them at the freeze point.
fn pump(mut from: TcpStream, mut to: TcpStream, state: Option<Arc<State>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        if let Some(st) = &state {
            let sent = st.sent.load(Ordering::SeqCst);
            let limit = st.freeze_after.load(Ordering::SeqCst);
            if sent + chunk.len() as u64 > limit {
                // Forward up to the limit, then hold the rest until thawed.
                let room = limit.saturating_sub(sent) as usize;
                if room > 0 && to.write_all(&chunk[..room]).is_err() {
                    break;
                }
                st.sent.fetch_add(room as u64, Ordering::SeqCst);
                chunk = &chunk[room..];
                let mut frozen = st.frozen.lock().unwrap();
                *frozen = true;
                while *frozen && !st.stop.load(Ordering::SeqCst) {
                    frozen = st.thawed.wait(frozen).unwrap();
                }
            }
            st.sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
