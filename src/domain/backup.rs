//! The backup file format (DESIGN.md "Backups"; README "Backup file format"): a streaming
//! writer and a verifying reader over any `Write` / `Read`. A codec only: it opens no file and
//! talks to no Redis.
//!
//! ```text
//! file    = header chunk*                                  (the last chunk has FINAL set)
//! header  = "SWSBAK01" | version u8 = 1 | flags u8 (bit 0: encrypted)
//!           | key id [8] | nonce prefix [4]                (22 bytes; zeros when plain)
//! chunk   = len u32 big-endian (bit 31: FINAL) | body[len & 0x7fffffff]
//! body    = plain:     up to 64 KiB of the zstd stream
//!           encrypted: AES-256-GCM of up to 64 KiB of the zstd stream (+ 16-byte tag), with
//!                      nonce = nonce prefix | chunk index u64 BE and
//!                      AAD   = header | chunk index u64 BE | FINAL u8 (0 / 1)
//! content = the zstd stream decompressed: JSON lines, the first the manifest, the last
//!           {"type":"trailer","lines":N,"sha256":"<hex>"} — SHA-256 of every byte before
//!           the trailer line (the N lines with their newlines)
//! ```
//!
//! What that buys: a flipped byte fails the chunk's GCM tag (encrypted) or the zstd checksum
//! or the trailer's SHA-256 (plain); a file cut at a chunk boundary has no FINAL chunk and a
//! file cut inside the content has no trailer (both `truncated`); chunks cannot be reordered,
//! dropped or replayed from another file (index, FINAL and the header, random nonce prefix
//! included, are authenticated); the key id names which configured key opens the file (a
//! wrong key is told apart from a damaged file before any chunk is read). Memory is one chunk
//! and zstd's window, whatever the file's size.

use std::io::{self, BufRead, BufReader, Read, Write};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

type GcmNonce = Nonce<aes_gcm::aead::consts::U12>;
use base64::Engine;
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"SWSBAK01";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 22;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const FINAL: u32 = 1 << 31;
const TAG: usize = 16;
/// zstd level: fast (the default 3), the content is JSON.
const LEVEL: i32 = 3;
/// Longest content line accepted when reading (a manifest, an entry with its history).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Why a file cannot be read. Each has a stable code (problem documents answer 422 with it).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a swarmstate backup file (bad magic)")]
    NotABackup,
    #[error("backup format version {0} is not supported by this binary (it reads version 1)")]
    UnsupportedVersion(u8),
    #[error("the backup is encrypted and no backup key is configured (SWARMSTATE_BACKUP_KEY)")]
    KeyMissing,
    #[error("the backup was encrypted with key id {0}, which is neither the backup key nor one of backup_keys_old")]
    WrongKey(String),
    #[error("the backup is damaged or was altered: {0}")]
    Tampered(String),
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    #[error("reading or writing the backup failed: {0}")]
    Io(String),
}

impl BackupError {
    /// The machine code of a problem document about this file.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::NotABackup | BackupError::UnsupportedVersion(_) => "backup_invalid",
            BackupError::KeyMissing => "backup_key_missing",
            BackupError::WrongKey(_) => "backup_key_mismatch",
            BackupError::Tampered(_) => "backup_tampered",
            BackupError::Truncated(_) => "backup_truncated",
            BackupError::Io(_) => "backup_io",
        }
    }
}

/// An io::Error carrying a BackupError through zstd's reader and writer.
fn wrap(e: BackupError) -> io::Error {
    io::Error::other(e)
}

/// The BackupError inside an io::Error, or `other(text)` for any other failure.
fn unwrap(e: io::Error, other: impl FnOnce(String) -> BackupError) -> BackupError {
    if e.get_ref().is_some_and(|i| i.is::<BackupError>()) {
        if let Ok(inner) = e.into_inner().unwrap().downcast::<BackupError>() {
            return *inner;
        }
        return BackupError::Io("unreadable error".into());
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => BackupError::Truncated(e.to_string()),
        _ => other(e.to_string()),
    }
}

/// A 32-byte AES-256 key: 64 hex digits or base64 (standard or URL alphabet, padded or not).
#[derive(Clone)]
pub struct BackupKey {
    bytes: [u8; 32],
    id: [u8; 8],
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey(id {})", self.id_hex())
    }
}

impl BackupKey {
    pub fn parse(text: &str) -> Result<BackupKey, String> {
        let t = text.trim();
        let bytes: Vec<u8> = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect()
        } else {
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|e| e.decode(t).ok())
                .ok_or("a backup key is 32 bytes as 64 hex digits or base64")?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "a backup key is 32 bytes (this one is {}) as 64 hex digits or base64",
                b.len()
            )
        })?;
        let mut h = Sha256::new();
        h.update(b"swarmstate-backup-key-id\0");
        h.update(bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.finalize()[..8]);
        Ok(BackupKey { bytes, id })
    }

    /// The key's id as written in a file's header (hex): not secret, names the key.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.bytes.into())
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn nonce(prefix: &[u8; 4], index: u64) -> GcmNonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(prefix);
    n[4..].copy_from_slice(&index.to_be_bytes());
    n.into()
}

fn aad(header: &[u8; HEADER_LEN], index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_LEN + 9);
    a.extend_from_slice(header);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// The chunk layer under zstd's output: buffers CHUNK bytes, then frames (and seals) them.
struct ChunkSink<W: Write> {
    out: W,
    header: [u8; HEADER_LEN],
    key: Option<(Aes256Gcm, [u8; 4])>,
    buf: Vec<u8>,
    index: u64,
    written: u64,
}

impl<W: Write> ChunkSink<W> {
    fn emit(&mut self, last: bool) -> io::Result<()> {
        let body = match &self.key {
            None => std::mem::take(&mut self.buf),
            Some((cipher, prefix)) => {
                let aad = aad(&self.header, self.index, last);
                let sealed = cipher
                    .encrypt(
                        &nonce(prefix, self.index),
                        Payload {
                            msg: &self.buf,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| io::Error::other("encryption failed"))?;
                self.buf.clear();
                sealed
            }
        };
        let mut len = body.len() as u32;
        if last {
            len |= FINAL;
        }
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&body)?;
        self.written += 4 + body.len() as u64;
        self.index += 1;
        Ok(())
    }
}

impl<W: Write> Write for ChunkSink<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.emit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes a backup: `line` for each JSON line (the manifest first), then `finish`.
pub struct Writer<W: Write> {
    zstd: zstd::stream::write::Encoder<'static, ChunkSink<W>>,
    hash: Sha256,
    lines: u64,
    content_bytes: u64,
}

impl<W: Write> Writer<W> {
    /// Start a file; encrypted when a key is given (a fresh random nonce prefix per file).
    pub fn new(mut out: W, key: Option<&BackupKey>) -> io::Result<Writer<W>> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        let mut cipher = None;
        if let Some(k) = key {
            let mut prefix = [0u8; 4];
            getrandom::fill(&mut prefix).map_err(|e| io::Error::other(e.to_string()))?;
            header[9] = 1;
            header[10..18].copy_from_slice(&k.id);
            header[18..22].copy_from_slice(&prefix);
            cipher = Some((k.cipher(), prefix));
        }
        out.write_all(&header)?;
        let sink = ChunkSink {
            out,
            header,
            key: cipher,
            buf: Vec::with_capacity(CHUNK),
            index: 0,
            written: HEADER_LEN as u64,
        };
        let mut zstd = zstd::stream::write::Encoder::new(sink, LEVEL)?;
        zstd.include_checksum(true)?;
        Ok(Writer {
            zstd,
            hash: Sha256::new(),
            lines: 0,
            content_bytes: 0,
        })
    }

    /// Append one JSON value as a line.
    pub fn line<T: serde::Serialize>(&mut self, v: &T) -> io::Result<()> {
        let mut text = serde_json::to_vec(v).map_err(io::Error::other)?;
        text.push(b'\n');
        self.raw_line(&text)
    }

    /// Append one line that is already JSON text ending in `\n`.
    pub fn raw_line(&mut self, text: &[u8]) -> io::Result<()> {
        debug_assert!(text.ends_with(b"\n") && !text[..text.len() - 1].contains(&b'\n'));
        self.hash.update(text);
        self.lines += 1;
        self.content_bytes += text.len() as u64;
        self.zstd.write_all(text)
    }

    /// Content bytes (uncompressed) so far.
    pub fn content_bytes(&self) -> u64 {
        self.content_bytes
    }

    /// Write the trailer, end the zstd stream and the FINAL chunk. Returns the writer, the
    /// file's size in bytes and the content's SHA-256 (hex).
    pub fn finish(mut self) -> io::Result<(W, u64, String)> {
        let sha = hex(&self.hash.clone().finalize());
        let trailer = serde_json::json!({"type": "trailer", "lines": self.lines, "sha256": sha});
        let mut text = trailer.to_string().into_bytes();
        text.push(b'\n');
        self.zstd.write_all(&text)?;
        let mut sink = self.zstd.finish()?;
        sink.emit(true)?;
        sink.out.flush()?;
        Ok((sink.out, sink.written, sha))
    }
}

/// The header of a file, as read before any chunk.
#[derive(Debug, Clone)]
pub struct Header {
    pub encrypted: bool,
    /// Hex id of the key that opens it (None when plain).
    pub key_id: Option<String>,
}

/// The chunk layer under zstd's input: reads, checks and opens chunks in order.
struct ChunkSource<R: Read> {
    input: R,
    header: [u8; HEADER_LEN],
    key: Option<(Aes256Gcm, [u8; 4])>,
    buf: Vec<u8>,
    pos: usize,
    index: u64,
    done: bool,
}

impl<R: Read> ChunkSource<R> {
    fn next_chunk(&mut self) -> Result<(), BackupError> {
        let mut len = [0u8; 4];
        read_exact(&mut self.input, &mut len, "it ends before its last chunk")?;
        let len = u32::from_be_bytes(len);
        let last = len & FINAL != 0;
        let size = (len & !FINAL) as usize;
        let max = CHUNK + if self.key.is_some() { TAG } else { 0 };
        if size > max {
            return Err(BackupError::Tampered(format!(
                "chunk {} claims {size} bytes (at most {max})",
                self.index
            )));
        }
        let mut body = vec![0u8; size];
        read_exact(&mut self.input, &mut body, "it ends inside a chunk")?;
        self.buf = match &self.key {
            None => body,
            Some((cipher, prefix)) => {
                let aad = aad(&self.header, self.index, last);
                cipher
                    .decrypt(
                        &nonce(prefix, self.index),
                        Payload {
                            msg: &body,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| {
                        BackupError::Tampered(format!(
                            "chunk {} fails its authentication tag (altered, reordered or from another file)",
                            self.index
                        ))
                    })?
            }
        };
        self.pos = 0;
        self.index += 1;
        if last {
            self.done = true;
            let mut extra = [0u8; 1];
            match self.input.read(&mut extra) {
                Ok(0) => {}
                Ok(_) => return Err(BackupError::Tampered("bytes follow the final chunk".into())),
                Err(e) => return Err(BackupError::Io(e.to_string())),
            }
        }
        Ok(())
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BackupError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BackupError::Truncated(what.to_string()),
        _ => BackupError::Io(e.to_string()),
    })
}

impl<R: Read> Read for ChunkSource<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk().map_err(wrap)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads and verifies a backup line by line; the last `next_line` (None) checks the trailer.
pub struct Reader<R: Read> {
    lines: BufReader<zstd::stream::read::Decoder<'static, BufReader<ChunkSource<R>>>>,
    hash: Sha256,
    count: u64,
    pub header: Header,
    finished: bool,
    sha256: Option<String>,
}

/// Read only the header: whether the file is encrypted and with which key id.
pub fn read_header(input: &mut impl Read) -> Result<([u8; HEADER_LEN], Header), BackupError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match input.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(BackupError::Io(e.to_string())),
        }
    }
    if got < 8 || &header[..8] != MAGIC {
        return Err(BackupError::NotABackup);
    }
    if got < HEADER_LEN {
        return Err(BackupError::Truncated("it ends inside its header".into()));
    }
    if header[8] != VERSION {
        return Err(BackupError::UnsupportedVersion(header[8]));
    }
    if header[9] & !1 != 0 {
        return Err(BackupError::Tampered("unknown header flags".into()));
    }
    let encrypted = header[9] & 1 == 1;
    if !encrypted && header[10..].iter().any(|b| *b != 0) {
        return Err(BackupError::Tampered(
            "a plain file's key id and nonce must be zero".into(),
        ));
    }
    Ok((
        header,
        Header {
            encrypted,
            key_id: encrypted.then(|| hex(&header[10..18])),
        },
    ))
}

impl<R: Read> Reader<R> {
    /// Open a file: `keys` are the backup key and the old ones (any order); an encrypted file
    /// needs the one its header names.
    pub fn open(mut input: R, keys: &[BackupKey]) -> Result<Reader<R>, BackupError> {
        let (raw, header) = read_header(&mut input)?;
        let key = match &header.key_id {
            None => None,
            Some(id) => {
                if keys.is_empty() {
                    return Err(BackupError::KeyMissing);
                }
                let k = keys
                    .iter()
                    .find(|k| &k.id_hex() == id)
                    .ok_or_else(|| BackupError::WrongKey(id.clone()))?;
                let mut prefix = [0u8; 4];
                prefix.copy_from_slice(&raw[18..22]);
                Some((k.cipher(), prefix))
            }
        };
        let source = ChunkSource {
            input,
            header: raw,
            key,
            buf: Vec::new(),
            pos: 0,
            index: 0,
            done: false,
        };
        let zstd = zstd::stream::read::Decoder::new(source).map_err(|e| unwrap(e, BackupError::Tampered))?;
        Ok(Reader {
            lines: BufReader::with_capacity(CHUNK, zstd),
            hash: Sha256::new(),
            count: 0,
            header,
            finished: false,
            sha256: None,
        })
    }

    /// The next content line (without its newline), or None once the trailer has been read
    /// and every check passed.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        if self.finished {
            return Ok(None);
        }
        let mut line = Vec::new();
        let n = (&mut self.lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| unwrap(e, BackupError::Tampered))?;
        if n == 0 {
            return Err(BackupError::Truncated(
                "its content ends without the trailer".into(),
            ));
        }
        if line.len() > MAX_LINE {
            return Err(BackupError::Tampered("a line longer than 64 MiB".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(BackupError::Truncated("its content ends inside a line".into()));
        }
        if line.starts_with(br#"{"type":"trailer""#) || line.starts_with(br#"{"lines":"#) {
            if let Ok(t) = serde_json::from_slice::<serde_json::Value>(&line) {
                if t["type"] == "trailer" {
                    return self.check_trailer(&t).map(|_| None);
                }
            }
        }
        self.hash.update(&line);
        self.count += 1;
        line.pop();
        Ok(Some(line))
    }

    fn check_trailer(&mut self, t: &serde_json::Value) -> Result<(), BackupError> {
        let sha = hex(&self.hash.clone().finalize());
        if t["sha256"].as_str() != Some(sha.as_str()) || t["lines"].as_u64() != Some(self.count) {
            return Err(BackupError::Tampered(format!(
                "the content's SHA-256 is {sha} over {} lines; the trailer says {} over {}",
                self.count, t["sha256"], t["lines"]
            )));
        }
        // Nothing may follow the trailer, and the zstd frame and the final chunk must end.
        let mut rest = Vec::new();
        (&mut self.lines)
            .take(1)
            .read_to_end(&mut rest)
            .map_err(|e| unwrap(e, BackupError::Tampered))?;
        if !rest.is_empty() {
            return Err(BackupError::Tampered("content follows the trailer".into()));
        }
        self.finished = true;
        self.sha256 = Some(sha);
        Ok(())
    }

    /// Content lines read so far.
    pub fn lines_read(&self) -> u64 {
        self.count
    }

    /// Hex SHA-256 of the content, once the trailer has been read and matched it.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }
}

impl From<BackupError> for crate::error::ApiError {
    fn from(e: BackupError) -> Self {
        use crate::error::{ApiError, ErrorCode};
        let code = match e {
            BackupError::NotABackup | BackupError::UnsupportedVersion(_) => ErrorCode::BackupInvalid,
            BackupError::KeyMissing => ErrorCode::BackupKeyMissing,
            BackupError::WrongKey(_) => ErrorCode::BackupKeyMismatch,
            BackupError::Tampered(_) => ErrorCode::BackupTampered,
            BackupError::Truncated(_) => ErrorCode::BackupTruncated,
            BackupError::Io(e) => return ApiError::internal(format!("backup file: {e}")),
        };
        ApiError::new(code, e.to_string())
    }
}

/// Read a whole file, checking everything, and answer how many lines it holds.
pub fn verify(input: impl Read, keys: &[BackupKey]) -> Result<u64, BackupError> {
    let mut r = Reader::open(input, keys)?;
    while r.next_line()?.is_some() {}
    Ok(r.lines_read())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(byte: u8) -> BackupKey {
        BackupKey::parse(&hex(&[byte; 32])).unwrap()
    }

    /// A file of `n` lines of about 200 bytes each.
    fn file(n: usize, k: Option<&BackupKey>) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), k).unwrap();
        w.line(&json!({"type": "manifest", "version": 1})).unwrap();
        for i in 0..n {
            // Poorly compressible, so the file spans many chunks.
            let noise = format!(
                "{}{}",
                hex(&Sha256::digest(i.to_le_bytes())),
                hex(&Sha256::digest((i + 1_000_000).to_le_bytes()))
            );
            w.line(&json!({"type": "entry", "key": format!("k{i}"), "value": noise}))
                .unwrap();
        }
        let (bytes, size, _) = w.finish().unwrap();
        assert_eq!(size as usize, bytes.len());
        bytes
    }

    fn lines(bytes: &[u8], keys: &[BackupKey]) -> Result<Vec<serde_json::Value>, BackupError> {
        let mut r = Reader::open(bytes, keys)?;
        let mut out = Vec::new();
        while let Some(l) = r.next_line()? {
            out.push(serde_json::from_slice(&l).unwrap());
        }
        Ok(out)
    }

    #[test]
    fn keys_parse_from_hex_and_base64_and_nothing_else() {
        let raw = [7u8; 32];
        let a = BackupKey::parse(&hex(&raw)).unwrap();
        let b = BackupKey::parse(&base64::engine::general_purpose::STANDARD.encode(raw)).unwrap();
        let c = BackupKey::parse(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)).unwrap();
        assert_eq!((a.id_hex(), b.id_hex()), (c.id_hex(), c.id_hex()));
        assert_ne!(a.id_hex(), key(8).id_hex());
        for bad in [
            "",
            "abc",
            &hex(&[1u8; 31]),
            &base64::engine::general_purpose::STANDARD.encode([1u8; 16]),
        ] {
            assert!(BackupKey::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{a:?}").contains("0707"), "Debug never shows the key");
    }

    #[test]
    fn plain_and_encrypted_files_round_trip_over_many_chunks() {
        for k in [None, Some(key(1))] {
            let bytes = file(3000, k.as_ref());
            assert!(bytes.len() > 2 * CHUNK, "{} bytes", bytes.len());
            let keys: Vec<BackupKey> = k.iter().cloned().collect();
            let got = lines(&bytes, &keys).unwrap();
            assert_eq!(got.len(), 3001);
            assert_eq!(got[0]["type"], "manifest");
            assert_eq!(got[3000]["key"], "k2999");
            assert_eq!(verify(&bytes[..], &keys).unwrap(), 3001);
            let (_, h) = read_header(&mut &bytes[..]).unwrap();
            assert_eq!(h.encrypted, k.is_some());
        }
        // Two encryptions of the same content differ (a random nonce prefix per file).
        assert_ne!(file(10, Some(&key(1))), file(10, Some(&key(1))));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        for k in [None, Some(key(2))] {
            let bytes = file(400, k.as_ref());
            let keys: Vec<BackupKey> = k.iter().cloned().collect();
            // Every byte of the header and a spread of the rest.
            let step = (bytes.len() / 300).max(1);
            for i in (0..HEADER_LEN)
                .chain((HEADER_LEN..bytes.len()).step_by(step))
                .chain([bytes.len() - 1])
            {
                let mut bad = bytes.clone();
                bad[i] ^= 0x20;
                assert!(
                    verify(&bad[..], &keys).is_err(),
                    "flipped byte {i} of {} was accepted (key: {})",
                    bytes.len(),
                    k.is_some()
                );
            }
        }
    }

    #[test]
    fn truncated_files_are_refused_as_truncated() {
        for k in [None, Some(key(3))] {
            let bytes = file(400, k.as_ref());
            let keys: Vec<BackupKey> = k.iter().cloned().collect();
            let step = (bytes.len() / 200).max(1);
            for cut in (0..bytes.len())
                .step_by(step)
                .chain([bytes.len() - 1, HEADER_LEN, HEADER_LEN + 4])
            {
                let e = verify(&bytes[..cut], &keys).expect_err("a cut file");
                if cut >= 8 {
                    assert!(
                        matches!(e, BackupError::Truncated(_))
                            || (k.is_none() && matches!(e, BackupError::Tampered(_))),
                        "cut at {cut}: {e}"
                    );
                }
            }
            // Extra bytes after the final chunk are refused too.
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                verify(&longer[..], &keys),
                Err(BackupError::Tampered(_))
            ));
        }
    }

    #[test]
    fn keys_are_checked_before_any_chunk() {
        let bytes = file(50, Some(&key(4)));
        assert!(matches!(verify(&bytes[..], &[]), Err(BackupError::KeyMissing)));
        match verify(&bytes[..], &[key(5)]) {
            Err(BackupError::WrongKey(id)) => assert_eq!(id, key(4).id_hex()),
            other => panic!("{other:?}"),
        }
        // An old key in the list opens it, whatever its place.
        assert_eq!(verify(&bytes[..], &[key(5), key(4)]).unwrap(), 51);
        // A file whose key id was rewritten to another configured key fails authentication.
        let mut forged = bytes.clone();
        forged[10..18].copy_from_slice(&key(5).id);
        assert!(matches!(
            verify(&forged[..], &[key(5)]),
            Err(BackupError::Tampered(_))
        ));
        // Not a backup at all; a newer format version.
        assert!(matches!(
            verify(&b"hello world, not a backup"[..], &[]),
            Err(BackupError::NotABackup)
        ));
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert!(matches!(
            verify(&newer[..], &[key(4)]),
            Err(BackupError::UnsupportedVersion(2))
        ));
        // Chunks of one file do not fit another (the header, nonce prefix included, is in the AAD).
        let other = file(50, Some(&key(4)));
        let mut spliced = bytes[..HEADER_LEN].to_vec();
        spliced.extend_from_slice(&other[HEADER_LEN..]);
        assert!(matches!(
            verify(&spliced[..], &[key(4)]),
            Err(BackupError::Tampered(_))
        ));
    }

    #[test]
    fn a_file_without_its_trailer_line_is_truncated_even_when_well_framed() {
        // The content is cut before the trailer, but the framing is intact: a writer that
        // never called finish() properly cannot produce a file that verifies.
        let mut w = Writer::new(Vec::new(), None).unwrap();
        w.line(&json!({"type": "manifest"})).unwrap();
        let mut sink = w.zstd.finish().unwrap();
        sink.emit(true).unwrap();
        assert!(matches!(
            verify(&sink.out[..], &[]),
            Err(BackupError::Truncated(_))
        ));
    }
}
