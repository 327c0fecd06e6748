//! The MLLP listener (HL7 v2 over TCP, optionally inside TLS): the Minimal Lower Layer
//! Protocol of HL7 v2 (its Implementation Guide, release 2) frames each message as
//! `<VT> message <FS><CR>` (0x0B ... 0x1C 0x0D). A connection carries any number of messages,
//! one after the other, each answered with its ACK in a frame of its own before the next is
//! read; a frame may arrive in pieces or several in one read.
//!
//! Bytes outside a frame (line noise, keep-alive newlines, a `<CR>` missing its `<FS>`) are
//! skipped; a frame abandoned by a new `<VT>` before its `<FS>` is dropped; a frame larger
//! than `mllp.max_message_bytes` is refused with `AR` and the connection closed (the rest of
//! it cannot be trusted to resynchronize). A connection silent for `mllp.idle_timeout_secs`
//! is closed. On shutdown the listener stops accepting, each connection finishes the message
//! it is applying and answers it, and then closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Intake;
use super::ack::{self, AckCode, ErrorCode, ErrorDetail, Header};
use crate::access::Access;
use crate::config::MllpConfig;

/// Start of block (`<VT>`).
pub const START_BLOCK: u8 = 0x0b;
/// End of block (`<FS>`), followed by a carriage return.
pub const END_BLOCK: u8 = 0x1c;
pub const CARRIAGE_RETURN: u8 = 0x0d;

/// A frame longer than the limit: its first bytes (for the refusal's header).
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge(pub Vec<u8>);

/// Cuts the bytes of a connection into messages.
#[derive(Debug)]
pub struct Deframer {
    buffer: Vec<u8>,
    /// How far the buffer (after its `<VT>`) has been searched for the end of the frame.
    scanned: usize,
    max_message_bytes: usize,
}

impl Deframer {
    pub fn new(max_message_bytes: usize) -> Deframer {
        Deframer {
            buffer: Vec::new(),
            scanned: 0,
            max_message_bytes,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Whether part of a frame is waiting for the rest.
    pub fn in_frame(&self) -> bool {
        self.buffer.first() == Some(&START_BLOCK)
    }

    /// The next complete message, if one is in the buffer.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, TooLarge> {
        loop {
            if !self.in_frame() {
                // skip whatever comes before the next frame
                match self.buffer.iter().position(|&b| b == START_BLOCK) {
                    Some(start) => {
                        self.buffer.drain(..start);
                        self.scanned = 1;
                    }
                    None => {
                        self.buffer.clear();
                        self.scanned = 0;
                        return Ok(None);
                    }
                }
            }
            let from = self.scanned.max(1);
            let end = self.buffer[from..]
                .iter()
                .position(|&b| b == END_BLOCK || b == START_BLOCK)
                .map(|i| from + i);
            match end {
                Some(end) if self.buffer[end] == END_BLOCK => {
                    if end - 1 > self.max_message_bytes {
                        let head = self.buffer[1..end.min(4096)].to_vec();
                        self.buffer.clear();
                        self.scanned = 0;
                        return Err(TooLarge(head));
                    }
                    let message = self.buffer[1..end].to_vec();
                    // the <CR> after <FS>, when it is there already, goes with the frame (when
                    // it comes later, it is skipped as bytes outside a frame)
                    let consumed = if self.buffer.get(end + 1) == Some(&CARRIAGE_RETURN) {
                        end + 2
                    } else {
                        end + 1
                    };
                    self.buffer.drain(..consumed);
                    self.scanned = 0;
                    return Ok(Some(message));
                }
                Some(restart) => {
                    // a new frame began before this one ended: the sender gave it up
                    tracing::warn!(
                        dropped_bytes = restart - 1,
                        "an MLLP frame was abandoned by a new start block"
                    );
                    self.buffer.drain(..restart);
                    self.scanned = 1;
                }
                None => {
                    self.scanned = self.buffer.len();
                    if self.buffer.len() - 1 > self.max_message_bytes {
                        let head = self.buffer[1..self.buffer.len().min(4096)].to_vec();
                        self.buffer.clear();
                        self.scanned = 0;
                        return Err(TooLarge(head));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// A message in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 3);
    framed.push(START_BLOCK);
    framed.extend_from_slice(message);
    framed.push(END_BLOCK);
    framed.push(CARRIAGE_RETURN);
    framed
}

/// The listener, bound and not yet serving.
#[allow(missing_debug_implementations)]
pub struct MllpListener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: MllpConfig,
}

impl MllpListener {
    /// Binds `mllp.host:mllp.port` and reads the TLS identity, if one is configured.
    pub async fn bind(config: &MllpConfig) -> anyhow::Result<MllpListener> {
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| {
                format!(
                    "binding the MLLP listener to {}:{}",
                    config.host, config.port
                )
            })?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                crate::startup::tls_identity(cert, key)?,
            ))),
            _ => None,
        };
        Ok(MllpListener {
            listener,
            tls,
            config: config.clone(),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until [`Serving::stop`].
    pub fn spawn(self, intake: Intake, access: Access) -> Serving {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            self,
            Arc::new(intake),
            Arc::new(access),
            stopped,
        ));
        Serving { stop, task }
    }
}

/// A running listener.
#[allow(missing_debug_implementations)]
pub struct Serving {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Stops accepting, lets each connection answer the message it is applying (for at most
    /// `grace`), and closes them.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace + Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

async fn accept_loop(
    listener: MllpListener,
    intake: Arc<Intake>,
    access: Arc<Access>,
    mut stopped: watch::Receiver<bool>,
) {
    let MllpListener {
        listener,
        tls,
        config,
    } = listener;
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    tracing::info!(
        port = listener.local_addr().map(|a| a.port()).unwrap_or(0),
        tls = tls.is_some(),
        "MLLP listener listening"
    );
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting an MLLP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_connections, "MLLP connection refused: too many connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (intake, access, config, tls, stopped) = (
            intake.clone(),
            access.clone(),
            config.clone(),
            tls.clone(),
            stopped.clone(),
        );
        connections.spawn(async move {
            let idle = Duration::from_secs(config.idle_timeout_secs);
            match tls {
                Some(tls) => match tokio::time::timeout(idle, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve(stream, peer, &intake, &access, &config, stopped).await,
                    Ok(Err(error)) => {
                        tracing::warn!(%peer, %error, "MLLP TLS handshake failed");
                    }
                    Err(_) => tracing::warn!(%peer, "MLLP TLS handshake timed out"),
                },
                None => serve(stream, peer, &intake, &access, &config, stopped).await,
            }
            drop(slot);
        });
    }
    drop(listener);
    // each connection answers the message in hand and closes
    while connections.join_next().await.is_some() {}
    tracing::info!("MLLP listener stopped");
}

/// Serves one connection: reads frames, answers each with its ACK, in order.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    intake: &Intake,
    access: &Access,
    config: &MllpConfig,
    mut stopped: watch::Receiver<bool>,
) {
    tracing::debug!(%peer, "MLLP connection opened");
    let idle = Duration::from_secs(config.idle_timeout_secs);
    let mut deframer = Deframer::new(config.max_message_bytes);
    let mut chunk = vec![0u8; 64 * 1024];
    let outcome: Result<(), String> = async {
        loop {
            loop {
                match deframer.next_message() {
                    Ok(Some(message)) => {
                        let ack = intake
                            .acknowledge(access, &config.allowed_facilities, &message)
                            .await;
                        write_frame(&mut stream, ack.as_bytes()).await?;
                    }
                    Ok(None) => break,
                    Err(TooLarge(head)) => {
                        let detail = ErrorDetail {
                            code: ErrorCode::ApplicationInternalError,
                            location: None,
                            message: format!(
                                "the message is larger than the limit of {} bytes; the connection is closed",
                                config.max_message_bytes
                            ),
                        };
                        let header = Header::read(&head);
                        let ack = ack::build(header.as_ref(), AckCode::Reject, Some(&detail));
                        tracing::warn!(%peer, "an MLLP message over the size limit was refused");
                        write_frame(&mut stream, ack.as_bytes()).await?;
                        return Ok(());
                    }
                }
            }
            if *stopped.borrow() {
                return Ok(());
            }
            let read = tokio::select! {
                read = tokio::time::timeout(idle, stream.read(&mut chunk)) => read,
                _ = stopped.changed() => return Ok(()),
            };
            match read {
                Err(_) => {
                    tracing::debug!(%peer, "MLLP connection idle; closed");
                    return Ok(());
                }
                Ok(Ok(0)) => {
                    if deframer.in_frame() {
                        tracing::warn!(%peer, "an MLLP connection closed in the middle of a frame; the partial message was dropped");
                    }
                    return Ok(());
                }
                Ok(Ok(n)) => deframer.push(&chunk[..n]),
                Ok(Err(error)) => return Err(error.to_string()),
            }
        }
    }
    .await;
    if let Err(error) = outcome {
        tracing::debug!(%peer, %error, "MLLP connection failed");
    }
    let _ = stream.shutdown().await;
    tracing::debug!(%peer, "MLLP connection closed");
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> Result<(), String> {
    stream
        .write_all(&frame(message))
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(deframer: &mut Deframer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(message) = deframer.next_message().expect("within the limit") {
            out.push(message);
        }
        out
    }

    #[test]
    fn a_frame_in_pieces_is_put_together() {
        let mut deframer = Deframer::new(1024);
        let message = b"MSH|^~\\&|A\rPID|1\r";
        let framed = frame(message);
        let mut got = Vec::new();
        for (i, byte) in framed.iter().enumerate() {
            deframer.push(&[*byte]);
            for complete in all(&mut deframer) {
                got.push((i, complete));
            }
        }
        // out as soon as its <FS> is in (the <CR> is not waited for)
        assert_eq!(got, vec![(framed.len() - 2, message.to_vec())]);
        assert!(!deframer.in_frame());
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = Vec::new();
        stream.extend(frame(b"one"));
        stream.extend(frame(b"two"));
        stream.extend(frame(b"three"));
        for cut in 0..stream.len() {
            let mut deframer = Deframer::new(1024);
            deframer.push(&stream[..cut]);
            let mut got = all(&mut deframer);
            deframer.push(&stream[cut..]);
            got.extend(all(&mut deframer));
            assert_eq!(
                got,
                vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bytes_outside_frames_are_skipped() {
        let mut deframer = Deframer::new(1024);
        deframer.push(b"\r\n garbage \x1c\r");
        deframer.push(&frame(b"one"));
        deframer.push(b"\n\n");
        deframer.push(&frame(b"two"));
        assert_eq!(all(&mut deframer), vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn a_frame_given_up_for_a_new_one_is_dropped() {
        let mut deframer = Deframer::new(1024);
        deframer.push(b"\x0bhalf a mess");
        assert_eq!(all(&mut deframer), Vec::<Vec<u8>>::new());
        deframer.push(&frame(b"whole"));
        assert_eq!(all(&mut deframer), vec![b"whole".to_vec()]);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_with_its_head() {
        let mut deframer = Deframer::new(10);
        deframer.push(b"\x0bMSH|^~\\&|0123456789");
        assert_eq!(
            deframer.next_message(),
            Err(TooLarge(b"MSH|^~\\&|0123456789".to_vec()))
        );
        let mut deframer = Deframer::new(10);
        deframer.push(&frame(b"0123456789"));
        assert_eq!(all(&mut deframer), vec![b"0123456789".to_vec()]);
        // whole in one read, and still too large
        deframer.push(&frame(b"0123456789A"));
        assert_eq!(
            deframer.next_message(),
            Err(TooLarge(b"0123456789A".to_vec()))
        );
    }
}
