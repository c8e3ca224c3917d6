//! One connection's TLS state machine, sans IO: the handshake (and TLS 1.2)
//! over rustls' unbuffered API, TLS 1.3 traffic over our own record layer.
//!
//! Buffers are the caller's: ciphertext is processed in the worker's
//! [`TlsScratch`]; decrypted bytes are appended to the caller's plaintext
//! `Vec` and TLS records to the caller's output `Vec`. A [`TlsConn`] keeps
//! only its session state plus `carry`, the ciphertext of a record that has
//! not fully arrived, which is empty (and unallocated) whenever the peer is
//! between records; an idle connection holds no buffer of its own.
//!
//! Once a TLS 1.3 handshake is over and rustls has written all it owes
//! (the session tickets), the record keys and sequence numbers are taken
//! out of rustls (`dangerous_extract_secrets`) and its connection (≈ 2 KiB
//! with its private buffers) is dropped. What is left is the keys, the
//! sequence numbers and the two traffic secrets ([`traffic_keys`], caught
//! from rustls' `KeyLog` during the handshake) for KeyUpdates: records are
//! read and written by [`record`] (bench/results/tls-idle-memory.md).
//! TLS 1.2 connections stay on rustls throughout.

use std::borrow::Cow;
use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, HandshakeKind, ProtocolVersion, ServerConfig,
    SupportedCipherSuite, Tls13CipherSuite,
};

use super::compact_aead::CompactKey;
use super::config::ALPN_HTTP11;
use super::error::TlsError;
use super::record::{self, Content, Direction, RecordError, MAX_KEY_UPDATES_IN_A_ROW};
use super::traffic_keys::{self, HandshakeSecrets, TrafficSecret};

/// Budgets for a worker's TLS connections.
#[derive(Debug, Clone, Copy)]
pub struct TlsLimits {
    /// Bytes a connection may hold while its handshake has not finished
    /// (partial ClientHello, handshake messages split across records). A
    /// real ClientHello is a few hundred bytes to ~2 KiB (with post-quantum
    /// key shares); past this the connection fails with
    /// [`TlsError::HandshakeTooLarge`].
    pub max_handshake_buffer: usize,
}

/// Default handshake budget: one full TLS record (16 KiB plaintext plus the
/// 5-byte header), so any ClientHello a browser sends fits, and 1M stalled
/// handshakes could at worst hold 16 GiB (the handshake timeout and per-IP
/// limits bound how many exist at once).
pub const DEFAULT_MAX_HANDSHAKE_BUFFER: usize = 16 * 1024 + 5;

/// The most ciphertext an established connection may carry between calls:
/// one incomplete record, at most the TLS 1.2 ciphertext limit (2^14 + 2048)
/// plus its header. rustls rejects longer records, so this is a safety net.
const MAX_RECORD_CARRY: usize = 5 + 16 * 1024 + 2048;

impl Default for TlsLimits {
    fn default() -> Self {
        Self {
            max_handshake_buffer: DEFAULT_MAX_HANDSHAKE_BUFFER,
        }
    }
}

/// Per-worker buffers shared by all its TLS connections.
#[derive(Debug, Default)]
pub struct TlsScratch {
    /// Ciphertext being processed (a connection's carry plus new bytes).
    incoming: Vec<u8>,
    pub limits: TlsLimits,
}

impl TlsScratch {
    pub fn new(limits: TlsLimits) -> Self {
        Self {
            incoming: Vec::with_capacity(64 * 1024),
            limits,
        }
    }
}

/// What one [`TlsConn::read_tls`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Plaintext bytes appended to the caller's plaintext `Vec`.
    pub plaintext: usize,
    /// This call finished the handshake: the WebSocket session starts now.
    pub handshake_completed: bool,
    /// The peer sent close_notify: no more plaintext will come. The caller
    /// answers with [`TlsConn::close_notify`] once its own output is done.
    pub peer_closed: bool,
}

/// One TLS connection's state.
pub struct TlsConn {
    engine: Engine,
    /// Ciphertext not yet consumed by rustls: an incomplete record (or, in
    /// the handshake, a handshake message split across records). Kept here
    /// only while non-empty; freed as soon as it is.
    carry: Vec<u8>,
    established: bool,
    peer_closed: bool,
    sent_close: bool,
    /// The configuration allows secret extraction
    /// (`enable_secret_extraction`, set by `TlsContext::new`): TLS 1.3
    /// connections move to our record layer after the handshake.
    own_records: bool,
}

/// Who reads and writes this connection's records.
enum Engine {
    /// rustls: every handshake, and TLS 1.2 connections for their whole
    /// life. Boxed so that a connection past it does not keep its size.
    Rustls(Box<Handshake>),
    /// Our own record layer, for an established TLS 1.3 connection.
    Records(Box<Tls13Records>),
    /// The switch to our record layer failed; nothing more can be done.
    Failed,
}

/// A connection on rustls.
struct Handshake {
    conn: UnbufferedServerConnection,
    /// The TLS 1.3 traffic secrets rustls logged during this handshake.
    secrets: Option<Box<HandshakeSecrets>>,
}

impl std::ops::Deref for Handshake {
    type Target = UnbufferedServerConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for Handshake {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// An established TLS 1.3 connection without rustls.
struct Tls13Records {
    suite: &'static Tls13CipherSuite,
    rx: Direction,
    tx: Direction,
    /// The traffic secrets behind `rx` and `tx` (the client's and the
    /// server's), for the next keys on a KeyUpdate.
    rx_secret: TrafficSecret,
    tx_secret: TrafficSecret,
    /// Records under one key after which this side updates its own key
    /// (the suite's confidentiality limit, 2^24.5 for AES-GCM; rustls
    /// does the same).
    tx_limit: u64,
    /// KeyUpdates still accepted before application data must come.
    key_updates_left: u8,
    alpn: Option<Cow<'static, [u8]>>,
    handshake_kind: Option<HandshakeKind>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self.engine {
            Engine::Rustls(_) => "rustls",
            Engine::Records(_) => "tls13-records",
            Engine::Failed => "failed",
        };
        f.debug_struct("TlsConn")
            .field("engine", &engine)
            .field("established", &self.established)
            .field("carry", &self.carry.len())
            .field("peer_closed", &self.peer_closed)
            .field("sent_close", &self.sent_close)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let own_records = config.enable_secret_extraction;
        Ok(Self {
            own_records,
            engine: Engine::Rustls(Box::new(Handshake {
                conn: UnbufferedServerConnection::new(config).map_err(TlsError::Setup)?,
                secrets: None,
            })),
            carry: Vec::new(),
            established: false,
            peer_closed: false,
            sent_close: false,
        })
    }

    /// Feeds ciphertext read from the socket.
    ///
    /// Decrypted application data is appended to `plaintext`; records the
    /// server owes the peer (handshake flights, session tickets, alerts) are
    /// appended to `outgoing`, which the caller writes to the socket. On an
    /// error, whatever alert rustls queued is in `outgoing` too: write it,
    /// then close (plaintext decrypted before the error is still valid).
    ///
    /// After the peer's close_notify nothing more is TLS data: later bytes
    /// are dropped unread, so they cannot accumulate.
    pub fn read_tls(
        &mut self,
        ciphertext: &[u8],
        scratch: &mut TlsScratch,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<ReadOutcome, TlsError> {
        let mut read = self.begin_read(scratch, ciphertext.len());
        read.buf().copy_from_slice(ciphertext);
        read.finish(ciphertext.len(), plaintext, outgoing)
    }

    /// Starts a read straight into the worker's scratch, saving the copy
    /// [`TlsConn::read_tls`] makes: read the socket into
    /// [`TlsRead::buf`] (`room` bytes), then call [`TlsRead::finish`] with
    /// the count read. Dropping the [`TlsRead`] unfinished (the read failed
    /// or would block) leaves the connection as it was.
    pub fn begin_read<'a>(&'a mut self, scratch: &'a mut TlsScratch, room: usize) -> TlsRead<'a> {
        // The connection's carry (if any) goes in front of the new bytes
        // and is freed; what is left over is copied back in `finish`, so an
        // idle connection holds no allocation. The scratch only grows, so
        // it is zero-filled once, not on every read.
        let start = self.carry.len();
        let buf = &mut scratch.incoming;
        if buf.len() < start + room {
            buf.resize(start + room, 0);
        }
        buf[..start].copy_from_slice(&self.carry);
        self.carry = Vec::new();
        TlsRead {
            conn: self,
            scratch,
            start,
            room,
            finished: false,
        }
    }

    /// Processes `buf[..end]` of the scratch (carry, then new bytes).
    fn process_scratch(
        &mut self,
        scratch: &mut TlsScratch,
        end: usize,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<ReadOutcome, TlsError> {
        let mut outcome = ReadOutcome::default();
        if self.peer_closed {
            // Bytes behind close_notify are not TLS data any more.
            return Ok(outcome);
        }
        let buf = &mut scratch.incoming[..end];
        let before = plaintext.len();
        let mut consumed = 0;
        let mut result = self.process(buf, &mut consumed, plaintext, outgoing, &mut outcome);
        if result.is_ok() && self.established && !self.peer_closed {
            // The handshake may have ended in this very call, with the
            // first application records right behind it in `buf`: those
            // are ours to read.
            result = self.switch_to_records();
            if result.is_ok() {
                result = self.read_records(buf, &mut consumed, plaintext, outgoing, &mut outcome);
            }
        }
        outcome.plaintext = plaintext.len() - before;
        if let Err(e) = result {
            if matches!(e, TlsError::Protocol(_)) {
                self.flush_alert(&e, &mut buf[consumed..], outgoing);
            }
            return Err(e);
        }

        let left = &buf[consumed..];
        if self.peer_closed {
            return Ok(outcome);
        }
        if self.established {
            if left.len() > MAX_RECORD_CARRY {
                return Err(TlsError::RecordTooLarge {
                    buffered: left.len(),
                    limit: MAX_RECORD_CARRY,
                });
            }
        } else if left.len() > scratch.limits.max_handshake_buffer {
            return Err(TlsError::HandshakeTooLarge {
                buffered: left.len(),
                limit: scratch.limits.max_handshake_buffer,
            });
        }
        if !left.is_empty() {
            self.carry = left.to_vec();
        }
        Ok(outcome)
    }

    /// Encrypts `data` into TLS records appended to `outgoing`. Pass all the
    /// plaintext gathered for this connection in one loop turn at once: it
    /// becomes as few records as the 16 KiB record limit allows.
    pub fn write_plaintext(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> Result<(), TlsError> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.established || self.sent_close {
            return Err(TlsError::NotWritable);
        }
        if let Engine::Records(records) = &mut self.engine {
            return records.write(data, outgoing).map_err(|e| match e {
                RecordError::SequenceExhausted => TlsError::KeysExhausted,
                e => TlsError::Record(e),
            });
        }
        self.with_write_traffic(outgoing, |wt, out| {
            // Room for the records' overhead: header, content type, tag
            // (and TLS 1.2's explicit nonce) per 16 KiB fragment.
            let fragments = data.len() / (16 * 1024) + 1;
            let start = out.len();
            out.resize(start + data.len() + fragments * 64, 0);
            let mut result = wt.encrypt(data, &mut out[start..]);
            if let Err(EncryptError::InsufficientSize(need)) = result {
                out.resize(start + need.required_size, 0);
                result = wt.encrypt(data, &mut out[start..]);
            }
            match result {
                Ok(n) => {
                    out.truncate(start + n);
                    Ok(())
                }
                Err(EncryptError::EncryptExhausted) => {
                    out.truncate(start);
                    Err(TlsError::KeysExhausted)
                }
                Err(EncryptError::InsufficientSize(_)) => {
                    out.truncate(start);
                    Err(TlsError::NotWritable)
                }
            }
        })
    }

    /// Appends a close_notify alert to `outgoing` (once; later calls do
    /// nothing). Nothing can be written after it.
    pub fn close_notify(&mut self, outgoing: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.sent_close {
            return Ok(());
        }
        if !self.established {
            // Mid-handshake there is nothing to close cleanly: the caller
            // just closes the socket.
            self.sent_close = true;
            return Ok(());
        }
        if let Engine::Records(records) = &mut self.engine {
            self.sent_close = true;
            return record::seal_alert(AlertDescription::CloseNotify, &mut records.tx, outgoing)
                .map_err(|_| TlsError::NotWritable);
        }
        let result = self.with_write_traffic(outgoing, |wt, out| {
            let start = out.len();
            // A close_notify record is 24 bytes in TLS 1.3, 31 in TLS 1.2.
            out.resize(start + 64, 0);
            match wt.queue_close_notify(&mut out[start..]) {
                Ok(n) => {
                    out.truncate(start + n);
                    Ok(())
                }
                Err(_) => {
                    out.truncate(start);
                    Err(TlsError::NotWritable)
                }
            }
        });
        self.sent_close = true;
        result
    }

    /// True until the handshake has finished.
    pub fn is_handshaking(&self) -> bool {
        !self.established
    }

    /// The peer has sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Ciphertext bytes this connection holds between calls.
    pub fn buffered(&self) -> usize {
        self.carry.len()
    }

    /// Capacity of this connection's own ciphertext buffer (0 when idle).
    pub fn buffered_capacity(&self) -> usize {
        self.carry.capacity()
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.engine {
            Engine::Rustls(conn) => conn.alpn_protocol(),
            Engine::Records(records) => records.alpn.as_deref(),
            Engine::Failed => None,
        }
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.engine {
            Engine::Rustls(conn) => conn.protocol_version(),
            Engine::Records(_) => Some(ProtocolVersion::TLSv1_3),
            Engine::Failed => None,
        }
    }

    /// Full or resumed handshake, once known.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        match &self.engine {
            Engine::Rustls(conn) => conn.handshake_kind(),
            Engine::Records(records) => records.handshake_kind,
            Engine::Failed => None,
        }
    }

    /// The connection's records are read and written by our own TLS 1.3
    /// record layer (not rustls).
    pub fn uses_own_records(&self) -> bool {
        matches!(self.engine, Engine::Records(_))
    }

    /// Lowers the number of records this side writes under one key before
    /// it updates its key (the suite's confidentiality limit otherwise,
    /// 2^24.5 records for AES-GCM), so that tests reach it. Does nothing
    /// unless the connection uses our record layer.
    #[doc(hidden)]
    pub fn set_write_key_limit(&mut self, records: u64) {
        if let Engine::Records(records_state) = &mut self.engine {
            records_state.tx_limit = records;
        }
    }

    /// Moves an established TLS 1.3 connection from rustls to our record
    /// layer, if the configuration allows it and it has not happened yet.
    fn switch_to_records(&mut self) -> Result<(), TlsError> {
        let Engine::Rustls(hs) = &mut self.engine else {
            return Ok(());
        };
        let suite = match hs.negotiated_cipher_suite() {
            Some(SupportedCipherSuite::Tls13(suite)) if self.own_records => suite,
            _ => {
                // Staying on rustls (TLS 1.2): nothing to keep.
                hs.secrets = None;
                return Ok(());
            }
        };
        // Without both traffic secrets a KeyUpdate could not be answered:
        // such a connection stays on rustls (it cannot happen with the
        // server's configuration, whose KeyLog catches them).
        if !hs
            .secrets
            .as_ref()
            .is_some_and(|s| s.client.is_some() && s.server.is_some())
        {
            return Ok(());
        }
        let Engine::Rustls(hs) = std::mem::replace(&mut self.engine, Engine::Failed) else {
            return Ok(());
        };
        let Handshake { conn, secrets } = *hs;
        let (Some(rx_secret), Some(tx_secret)) = secrets.map_or((None, None), |s| {
            let HandshakeSecrets { client, server, .. } = *s;
            (client, server)
        }) else {
            return Err(TlsError::Record(RecordError::KeySetup));
        };
        let alpn = conn.alpn_protocol().map(|p| match p {
            // The protocol wsgate offers: no allocation for it.
            p if p == ALPN_HTTP11 => Cow::Borrowed(ALPN_HTTP11),
            p => Cow::Owned(p.to_vec()),
        });
        let handshake_kind = conn.handshake_kind();
        // rustls refuses if it still has records to send; it has none here:
        // `process` ran it to WriteTraffic, past its tickets. The
        // deprecation warns that rustls would not handle tickets or key
        // updates after this: the server has sent its tickets, and key
        // updates are ours.
        #[allow(deprecated)]
        let extracted = conn.dangerous_extract_secrets().map_err(TlsError::Setup)?;
        let direction = |(seq, keys): (u64, ConnectionTrafficSecrets), secret: &TrafficSecret| {
            let key = CompactKey::from_secrets(keys).ok_or(RecordError::KeySetup)?;
            // The secrets caught from the KeyLog must be this connection's:
            // they derive exactly the keys rustls hands over.
            match secret.key(suite, &key) {
                Some(derived) if derived.same_as(&key) => Ok(Direction::new(key, seq)),
                _ => Err(TlsError::Record(RecordError::KeySetup)),
            }
        };
        let rx = direction(extracted.rx, &rx_secret)?;
        let tx = direction(extracted.tx, &tx_secret)?;
        self.engine = Engine::Records(Box::new(Tls13Records {
            suite,
            rx,
            tx,
            rx_secret,
            tx_secret,
            tx_limit: suite.common.confidentiality_limit,
            key_updates_left: MAX_KEY_UPDATES_IN_A_ROW,
            alpn,
            handshake_kind,
        }));
        Ok(())
    }

    /// Reads the whole records of `buf[*consumed..]` with our record layer
    /// (does nothing on rustls). On an error the alert it calls for is
    /// queued and nothing more is written.
    fn read_records(
        &mut self,
        buf: &mut [u8],
        consumed: &mut usize,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
        outcome: &mut ReadOutcome,
    ) -> Result<(), TlsError> {
        let Engine::Records(records) = &mut self.engine else {
            return Ok(());
        };
        match records.read(buf, consumed, plaintext, outgoing, self.sent_close) {
            Ok(peer_closed) => {
                if peer_closed {
                    self.peer_closed = true;
                    outcome.peer_closed = true;
                }
                Ok(())
            }
            Err(e) => {
                if let Some(alert) = e.alert().filter(|_| !self.sent_close) {
                    // Best effort: the connection is closing either way.
                    let _ = record::seal_alert(alert, &mut records.tx, outgoing);
                }
                self.sent_close = true;
                Err(TlsError::Record(e))
            }
        }
    }

    /// Runs rustls over `buf` until it needs more input. `consumed` counts
    /// the leading bytes of `buf` rustls is done with.
    fn process(
        &mut self,
        buf: &mut [u8],
        consumed: &mut usize,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
        outcome: &mut ReadOutcome,
    ) -> Result<(), TlsError> {
        let Engine::Rustls(conn) = &mut self.engine else {
            return Ok(());
        };
        loop {
            // The traffic secrets rustls logs during this call are this
            // connection's (see `traffic_keys` for why).
            traffic_keys::arm();
            let UnbufferedStatus { discard, state } =
                conn.conn.process_tls_records(&mut buf[*consumed..]);
            if let Some(secrets) = traffic_keys::take() {
                conn.secrets = Some(secrets);
            }
            *consumed += discard;
            let state = state.map_err(TlsError::Protocol)?;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(TlsError::Protocol)?;
                        *consumed += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                }
                // Early data is off (`max_early_data_size` 0), so this does
                // not happen; drained the same way if rustls ever offers it.
                ConnectionState::ReadEarlyData(mut early) => {
                    while let Some(record) = early.next_record() {
                        let record = record.map_err(TlsError::Protocol)?;
                        *consumed += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(encode) => encode_into(encode, outgoing)?,
                // The caller writes `outgoing` after this call returns;
                // nothing in rustls waits for the bytes to leave.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    outcome.peer_closed = true;
                }
                ConnectionState::WriteTraffic(_) => {
                    if !self.established {
                        self.established = true;
                        outcome.handshake_completed = true;
                    }
                    return Ok(());
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => return Ok(()),
                // `ConnectionState` is non-exhaustive; a new state would need
                // handling here, so treat it as "needs more input".
                _ => return Ok(()),
            }
        }
    }

    /// Brings rustls to its `WriteTraffic` state, emitting whatever it has
    /// queued first (tickets, a key update), and runs `f` there.
    fn with_write_traffic(
        &mut self,
        outgoing: &mut Vec<u8>,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), TlsError>,
    ) -> Result<(), TlsError> {
        // rustls must see the same not-yet-consumed bytes it saw last time
        // (a handshake message split across records is tracked by offset),
        // so the carry is passed, not an empty slice. It holds no complete
        // record, so no plaintext can come out of it.
        let Engine::Rustls(conn) = &mut self.engine else {
            return Err(TlsError::NotWritable);
        };
        let mut carry = std::mem::take(&mut self.carry);
        let mut f = Some(f);
        let mut consumed = 0;
        let result = loop {
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut carry[consumed..]);
            consumed += discard;
            match state {
                Err(e) => {
                    break Err(TlsError::Protocol(e));
                }
                Ok(ConnectionState::EncodeTlsData(encode)) => {
                    if let Err(e) = encode_into(encode, outgoing) {
                        break Err(e);
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(ConnectionState::WriteTraffic(mut wt)) => {
                    // WriteTraffic ends the loop, so `f` is still there.
                    break match f.take() {
                        Some(f) => f(&mut wt, outgoing),
                        None => Err(TlsError::NotWritable),
                    };
                }
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(_) => break Err(TlsError::NotWritable),
            }
        };
        if let Err(e @ TlsError::Protocol(_)) = &result {
            self.flush_alert(e, &mut carry[consumed..], outgoing);
        }
        if consumed < carry.len() {
            carry.drain(..consumed);
            self.carry = carry;
        }
        result
    }

    /// After an error rustls has usually queued a fatal alert; emit it.
    /// `rest` is the unconsumed input of the failed call: rustls tracks its
    /// position in it, so it must be the same bytes.
    fn flush_alert(&mut self, error: &TlsError, rest: &mut [u8], outgoing: &mut Vec<u8>) {
        // A peer's own fatal alert gets no answer; nothing is queued.
        if let TlsError::Protocol(rustls::Error::AlertReceived(_)) = error {
            return;
        }
        // rustls hands out queued records before it looks at input again,
        // so one call yields the alert. Exactly one: a second call would
        // re-read the failed record and try to queue a second alert.
        let Engine::Rustls(conn) = &mut self.engine else {
            return;
        };
        let UnbufferedStatus { state, .. } = conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(encode)) = state {
            // Best effort: the connection is closing either way.
            let _ = encode_into(encode, outgoing);
        }
    }
}

impl Tls13Records {
    /// Reads whole records from `buf[*consumed..]`, advancing `consumed`
    /// past each; stops at an incomplete one. Returns whether the peer sent
    /// close_notify (bytes behind it are left unread).
    fn read(
        &mut self,
        buf: &mut [u8],
        consumed: &mut usize,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
        sent_close: bool,
    ) -> Result<bool, RecordError> {
        // The read key, expanded once for every record of this read (and
        // again after a KeyUpdate replaces it).
        let mut key = None;
        while record::record_len(&buf[*consumed..])?.is_some() {
            let k = match &key {
                Some(k) => k,
                None => key.insert(self.rx.key.expand().map_err(|_| RecordError::KeySetup)?),
            };
            let Some((len, content)) =
                record::open_record_with(&mut buf[*consumed..], &mut self.rx, k)?
            else {
                break;
            };
            *consumed += len;
            match content {
                Content::Data(data) => {
                    plaintext.extend_from_slice(data);
                    self.key_updates_left = MAX_KEY_UPDATES_IN_A_ROW;
                }
                Content::CloseNotify => return Ok(true),
                Content::KeyUpdate { update_requested } => {
                    self.key_updates_left = self
                        .key_updates_left
                        .checked_sub(1)
                        .ok_or(RecordError::TooManyKeyUpdates(MAX_KEY_UPDATES_IN_A_ROW))?;
                    self.rx_secret = self
                        .rx_secret
                        .next(self.suite)
                        .ok_or(RecordError::KeySetup)?;
                    self.rx = next_direction(self.suite, &self.rx_secret, &self.rx)?;
                    key = None;
                    // RFC 8446 4.6.3: answer before any more application
                    // data; after our close_notify nothing more is sent.
                    if update_requested && !sent_close {
                        self.update_tx(outgoing)?;
                    }
                }
            }
        }
        Ok(false)
    }

    /// Appends `data` as records, first updating this side's key when it
    /// has protected as many records as its suite allows.
    fn write(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.tx.seq >= self.tx_limit {
            self.update_tx(outgoing)?;
        }
        record::seal_data(data, &mut self.tx, outgoing)
    }

    /// Sends a KeyUpdate (not requesting one back) under the current key,
    /// then switches to the next.
    fn update_tx(&mut self, outgoing: &mut Vec<u8>) -> Result<(), RecordError> {
        record::seal_key_update(false, &mut self.tx, outgoing)?;
        self.tx_secret = self
            .tx_secret
            .next(self.suite)
            .ok_or(RecordError::KeySetup)?;
        self.tx = next_direction(self.suite, &self.tx_secret, &self.tx)?;
        Ok(())
    }
}

/// The record state of a new traffic secret: its key and IV, for the same
/// AEAD as `old`, from sequence number 0.
fn next_direction(
    suite: &Tls13CipherSuite,
    secret: &TrafficSecret,
    old: &Direction,
) -> Result<Direction, RecordError> {
    let key = secret.key(suite, &old.key).ok_or(RecordError::KeySetup)?;
    Ok(Direction::new(key, 0))
}

/// A read in progress into the worker's scratch ([`TlsConn::begin_read`]).
pub struct TlsRead<'a> {
    conn: &'a mut TlsConn,
    scratch: &'a mut TlsScratch,
    /// Where the new bytes start (after the carry).
    start: usize,
    room: usize,
    finished: bool,
}

impl TlsRead<'_> {
    /// Where the socket's bytes go.
    pub fn buf(&mut self) -> &mut [u8] {
        &mut self.scratch.incoming[self.start..self.start + self.room]
    }

    /// Processes the `n` bytes read into [`TlsRead::buf`]; as
    /// [`TlsConn::read_tls`].
    pub fn finish(
        mut self,
        n: usize,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> Result<ReadOutcome, TlsError> {
        self.finished = true;
        let end = self.start + n.min(self.room);
        self.conn
            .process_scratch(self.scratch, end, plaintext, outgoing)
    }
}

impl Drop for TlsRead<'_> {
    fn drop(&mut self) {
        // Unfinished: give the connection its carry back untouched.
        if !self.finished && self.start > 0 {
            self.conn.carry = self.scratch.incoming[..self.start].to_vec();
        }
    }
}

/// Appends the TLS data rustls wants to send to `out`.
fn encode_into(
    mut encode: EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let start = out.len();
    let need = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(need)) => need.required_size,
        Err(EncodeError::AlreadyEncoded) => return Ok(()),
    };
    out.resize(start + need, 0);
    match encode.encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(TlsError::NotWritable)
        }
    }
}
