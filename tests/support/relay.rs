//! A TCP relay a test owns, in front of a shared service (Neo4j): cut, hung and restored for
//! this test alone, so an outage scenario runs alongside other tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// A TCP relay to Neo4j that the test can cut (refusing new connections and dropping open
/// ones), hang (accepting connections and never answering: a hung server) and restore: an
/// outage only this test sees.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Relay {
    /// Starts relaying to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let hung = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (open2, hung2, cut2) = (open.clone(), hung.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if hung2.load(Ordering::SeqCst) {
                    // Held without a byte either way until the relay is restored.
                    let cut = cut2.clone();
                    tokio::spawn(async move {
                        cut.notified().await;
                        drop(client);
                    });
                    continue;
                }
                if !open2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Self {
            addr,
            open,
            hung,
            cut,
        }
    }

    /// Refuses new connections and drops open ones: the service is down.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Neo4j hangs: open connections go silent (dropped), new ones are accepted and never
    /// answered.
    pub fn hang(&self) {
        self.hung.store(true, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Relays again.
    pub fn restore(&self) {
        self.hung.store(false, Ordering::SeqCst);
        self.open.store(true, Ordering::SeqCst);
        self.cut.notify_waiters();
    }
}
