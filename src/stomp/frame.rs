//! STOMP frames on the wire: the incremental [`Decoder`] that reads frames
//! out of whatever pieces a transport delivers, [`encode`], and the header
//! escaping of STOMP 1.2 and 1.1.
//!
//! A frame is a command line, header lines, a blank line, a body and a NUL
//! octet. What the decoder accepts, beyond the letter of the spec, is what
//! real clients send:
//! - Lines may end with LF or CRLF in either version (the legacy 1.1
//!   `stomp.js` sends LF, `@stomp/stompjs` may send CRLF); a CR before the
//!   LF is never part of a value.
//! - A frame may arrive split over several WebSocket messages (the legacy
//!   client splits frames over 16 KiB), or several frames in one message:
//!   [`Decoder::push`] takes any piece and [`Decoder::next_frame`] yields
//!   each frame once it is whole.
//! - EOLs between frames are heart-beats and are skipped.
//! - A repeated header keeps its first value (the spec's rule); all are
//!   kept in order.
//!
//! Every error says what was wrong and what to send instead; after one the
//! connection is to be closed (STOMP has no way to resynchronise a stream).

use std::borrow::Cow;
use std::fmt;

/// The protocol version a connection negotiated, which decides escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.1: `\n`, `\c` and `\\` are escapes; a CR cannot be escaped.
    V1_1,
    /// STOMP 1.2: `\r` is an escape too.
    V1_2,
}

impl Version {
    /// The version's name in `accept-version` and `version` headers.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// The highest version of a client's `accept-version` (a comma list)
    /// that the relay speaks; `None` when it names neither 1.1 nor 1.2 (a
    /// client without the header speaks 1.0, which the relay refuses).
    #[must_use]
    pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        let offered = accept_version?;
        let mut best = None;
        for version in offered.split(',').map(str::trim) {
            let version = match version {
                "1.2" => Version::V1_2,
                "1.1" => Version::V1_1,
                _ => continue,
            };
            best = best.max(Some(version));
        }
        best
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame's command: the client's and the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as it is written on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    fn parse(text: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|command| command.as_str() == text)
    }

    /// Whether a client may send it (the rest are the server's).
    #[must_use]
    pub fn is_client(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// `CONNECT`, `STOMP` and `CONNECTED` are never escaped: they are sent
    /// before a version is agreed.
    fn escapes(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame, headers unescaped, in the order they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with no headers and no body.
    #[must_use]
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The frame with one more header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The frame with this body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A header's value: the first, if it is repeated.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why the bytes are not a STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame (or its `content-length`) is over the limit.
    TooLarge { limit: usize },
    /// The command line is no STOMP command.
    UnknownCommand(String),
    /// The command or a header is not UTF-8.
    NotUtf8,
    /// A header line has no `:`.
    HeaderWithoutColon(String),
    /// A backslash that is not one of the version's escapes.
    UndefinedEscape { escape: String, version: Version },
    /// `content-length` is not a number.
    BadContentLength(String),
    /// The octet after `content-length` octets of body is not NUL.
    NoNulAfterBody { length: usize },
    /// A NUL came before the blank line that ends the headers.
    EndedInHeaders,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { limit } => write!(
                f,
                "the STOMP frame is larger than {limit} bytes (the relay's RELAY_MAX_FRAME_BYTES); send a smaller body"
            ),
            FrameError::UnknownCommand(command) => write!(
                f,
                "unknown STOMP command {command:?}; a client sends CONNECT, STOMP, SEND, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT or DISCONNECT"
            ),
            FrameError::NotUtf8 => f.write_str("the command and headers of a STOMP frame must be UTF-8"),
            FrameError::HeaderWithoutColon(line) => {
                write!(f, "the header line {line:?} has no ':'; write each header as name:value")
            }
            FrameError::UndefinedEscape { escape, version } => write!(
                f,
                "a header holds {escape:?}, which STOMP {version} does not define; a backslash must start one of {}",
                match version {
                    Version::V1_1 => r"\n, \c or \\",
                    Version::V1_2 => r"\r, \n, \c or \\",
                }
            ),
            FrameError::BadContentLength(value) => {
                write!(f, "content-length {value:?} is not a number of octets")
            }
            FrameError::NoNulAfterBody { length } => write!(
                f,
                "content-length says the body has {length} octets, but the octet after them is not the NUL that ends a frame; send the body's length in octets"
            ),
            FrameError::EndedInHeaders => f.write_str(
                "the frame ended (NUL) before the blank line that ends its headers; put an empty line between the headers and the body",
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// What a decoder's buffer keeps between frames, at most.
const IDLE_BUFFER_BYTES: usize = 4096;

/// Reads frames out of a byte stream that arrives in pieces.
#[derive(Debug)]
pub struct Decoder {
    buffer: Vec<u8>,
    max_frame_bytes: usize,
    version: Version,
    state: State,
}

/// How far the frame at the front of the buffer has been read, so that a
/// frame arriving in many small pieces is scanned once, not once a piece.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Looking for the blank line that ends the headers; the buffer up to
    /// `scanned` holds none.
    Head { scanned: usize },
    /// The headers end at `body_start`; with `length` the frame ends there,
    /// else at the first NUL, none before `scanned`.
    Body {
        body_start: usize,
        length: Option<usize>,
        scanned: usize,
    },
}

/// What [`Decoder::next_frame`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame.
    Frame(Frame),
    /// Nothing whole yet: push more bytes.
    Incomplete,
}

impl Decoder {
    /// A decoder for frames of at most `max_frame_bytes` (command, headers,
    /// body and NUL), escaping as 1.2 until [`Decoder::set_version`].
    #[must_use]
    pub fn new(max_frame_bytes: usize) -> Self {
        Decoder {
            buffer: Vec::new(),
            max_frame_bytes,
            version: Version::V1_2,
            state: State::Head { scanned: 0 },
        }
    }

    /// Changes the largest frame from here on (raised once the client is
    /// authenticated).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// The version agreed at `CONNECT`: it decides unescaping from here on.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Appends bytes as they arrived.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the frame being read (with everything
    /// buffered behind it) exceeds the limit and cannot be whole within it.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() > self.max_frame_bytes && !self.front_fits() {
            return Err(FrameError::TooLarge {
                limit: self.max_frame_bytes,
            });
        }
        Ok(())
    }

    /// Whether the frame at the front can end within the limit (so that
    /// several small frames in one piece are fine).
    fn front_fits(&self) -> bool {
        let start = self.skip_eols();
        let limit = start.saturating_add(self.max_frame_bytes);
        match self.state {
            State::Head { .. } => self.buffer[start..self.buffer.len().min(limit)].contains(&0),
            State::Body {
                length: Some(length),
                body_start,
                ..
            } => body_start.saturating_add(length) < limit,
            State::Body { .. } => self.buffer[start..self.buffer.len().min(limit)].contains(&0),
        }
    }

    /// Where the next frame starts: past the heart-beat EOLs.
    fn skip_eols(&self) -> usize {
        let mut at = 0;
        loop {
            match self.buffer.get(at..at + 2) {
                Some(b"\r\n") => at += 2,
                _ if self.buffer.get(at) == Some(&b'\n') => at += 1,
                _ => return at,
            }
        }
    }

    /// The next whole frame, if one is buffered.
    ///
    /// # Errors
    /// A [`FrameError`] when the bytes are not a frame; the stream cannot
    /// be read further after one.
    pub fn next_frame(&mut self) -> Result<Decoded, FrameError> {
        if let State::Head { .. } = self.state {
            let start = self.skip_eols();
            if start > 0 {
                self.buffer.drain(..start);
                self.state = State::Head { scanned: 0 };
            }
        }
        loop {
            match self.state {
                State::Head { scanned } => {
                    let Some(body_start) = self.find_head_end(scanned)? else {
                        return Ok(Decoded::Incomplete);
                    };
                    let length = content_length(&self.buffer[..body_start])?;
                    if let Some(length) = length
                        && body_start.saturating_add(length) >= self.max_frame_bytes
                    {
                        return Err(FrameError::TooLarge {
                            limit: self.max_frame_bytes,
                        });
                    }
                    self.state = State::Body {
                        body_start,
                        length,
                        scanned: body_start,
                    };
                }
                State::Body {
                    body_start,
                    length,
                    scanned,
                } => {
                    let end = if let Some(length) = length {
                        let end = body_start + length;
                        match self.buffer.get(end) {
                            None => return Ok(Decoded::Incomplete),
                            Some(0) => end,
                            Some(_) => return Err(FrameError::NoNulAfterBody { length }),
                        }
                    } else {
                        let Some(offset) = self.buffer[scanned..].iter().position(|&byte| byte == 0) else {
                            self.state = State::Body {
                                body_start,
                                length,
                                scanned: self.buffer.len(),
                            };
                            return Ok(Decoded::Incomplete);
                        };
                        scanned + offset
                    };
                    if end >= self.max_frame_bytes {
                        return Err(FrameError::TooLarge {
                            limit: self.max_frame_bytes,
                        });
                    }
                    let frame =
                        parse_head(&self.buffer[..body_start], self.version)?.with_body(&self.buffer[body_start..end]);
                    self.buffer.drain(..=end);
                    // A large frame grew the buffer: an idle connection
                    // keeps none of it.
                    if self.buffer.is_empty() && self.buffer.capacity() > IDLE_BUFFER_BYTES {
                        self.buffer = Vec::new();
                    }
                    self.state = State::Head { scanned: 0 };
                    return Ok(Decoded::Frame(frame));
                }
            }
        }
    }

    /// Where the body starts (past the blank line), if the headers are
    /// whole; the buffer before `scanned` is known to hold no blank line.
    fn find_head_end(&mut self, scanned: usize) -> Result<Option<usize>, FrameError> {
        // A blank line is an LF followed by LF or by CR LF; back up two
        // octets so that one split across pushes is found.
        let from = scanned.saturating_sub(2);
        for at in from..self.buffer.len() {
            match self.buffer[at] {
                0 => return Err(FrameError::EndedInHeaders),
                b'\n' => match self.buffer.get(at + 1..) {
                    Some([b'\n', ..]) => return Ok(Some(at + 2)),
                    Some([b'\r', b'\n', ..]) => return Ok(Some(at + 3)),
                    Some([] | [b'\r']) => {
                        self.state = State::Head { scanned: at };
                        return Ok(None);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        self.state = State::Head {
            scanned: self.buffer.len(),
        };
        Ok(None)
    }
}

/// The first `content-length` in the head, unescaping aside (digits need
/// none).
fn content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    for line in head.split(|&byte| byte == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = line.strip_prefix(b"content-length:") {
            let text = std::str::from_utf8(value).map_err(|_| FrameError::NotUtf8)?;
            return text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| FrameError::BadContentLength(text.to_owned()));
        }
    }
    Ok(None)
}

/// The command and headers of a head (up to and including its blank line).
fn parse_head(head: &[u8], version: Version) -> Result<Frame, FrameError> {
    let text = std::str::from_utf8(head).map_err(|_| FrameError::NotUtf8)?;
    let mut lines = text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));
    let command_line = lines.next().unwrap_or_default();
    let command = Command::parse(command_line).ok_or_else(|| FrameError::UnknownCommand(shorten(command_line)))?;
    let mut frame = Frame::new(command);
    for line in lines.take_while(|line| !line.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| FrameError::HeaderWithoutColon(shorten(line)))?;
        if command.escapes() {
            frame.headers.push((
                unescape(name, version)?.into_owned(),
                unescape(value, version)?.into_owned(),
            ));
        } else {
            frame.headers.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(frame)
}

/// At most 64 characters of a line, for an error message.
fn shorten(line: &str) -> String {
    line.chars().take(64).collect()
}

/// A header name or value as the version writes it. A NUL or another
/// control character (which STOMP cannot escape, and a NUL ends a frame
/// for readers that split on it) becomes U+FFFD: a server frame can never
/// carry one in a header, whoever chose the text.
#[must_use]
pub fn escape(text: &str, version: Version) -> Cow<'_, str> {
    if !text.contains(|character: char| matches!(character, '\\' | ':') || character.is_control()) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        match character {
            '\\' => escaped.push_str(r"\\"),
            '\n' => escaped.push_str(r"\n"),
            ':' => escaped.push_str(r"\c"),
            '\r' => match version {
                Version::V1_2 => escaped.push_str(r"\r"),
                // 1.1 has no escape for it: a space keeps the line intact.
                Version::V1_1 => escaped.push(' '),
            },
            other if other.is_control() => escaped.push(char::REPLACEMENT_CHARACTER),
            other => escaped.push(other),
        }
    }
    Cow::Owned(escaped)
}

/// A header name or value as the version reads it.
///
/// # Errors
/// [`FrameError::UndefinedEscape`] for a backslash that starts no escape
/// of the version.
pub fn unescape(text: &str, version: Version) -> Result<Cow<'_, str>, FrameError> {
    if !text.contains('\\') {
        return Ok(Cow::Borrowed(text));
    }
    let mut plain = String::with_capacity(text.len());
    let mut characters = text.chars();
    while let Some(character) = characters.next() {
        if character != '\\' {
            plain.push(character);
            continue;
        }
        match (characters.next(), version) {
            (Some('\\'), _) => plain.push('\\'),
            (Some('n'), _) => plain.push('\n'),
            (Some('c'), _) => plain.push(':'),
            (Some('r'), Version::V1_2) => plain.push('\r'),
            (next, _) => {
                return Err(FrameError::UndefinedEscape {
                    escape: next.map_or_else(|| "\\".to_owned(), |next| format!("\\{next}")),
                    version,
                });
            }
        }
    }
    Ok(Cow::Owned(plain))
}

/// The frame's bytes, headers escaped as the version says (never for
/// `CONNECT`, `STOMP` and `CONNECTED`, whose CRs and LFs become spaces so
/// that a line stays a line). Headers are written as given: a body that
/// may hold a NUL needs a `content-length` among them.
#[must_use]
pub fn encode(frame: &Frame, version: Version) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32 + frame.body.len() + frame.headers.len() * 24);
    bytes.extend_from_slice(frame.command.as_str().as_bytes());
    bytes.push(b'\n');
    for (name, value) in &frame.headers {
        if frame.command.escapes() {
            bytes.extend_from_slice(escape(name, version).as_bytes());
            bytes.push(b':');
            bytes.extend_from_slice(escape(value, version).as_bytes());
        } else {
            bytes.extend(name.bytes().map(line_safe));
            bytes.push(b':');
            bytes.extend(value.bytes().map(line_safe));
        }
        bytes.push(b'\n');
    }
    bytes.push(b'\n');
    bytes.extend_from_slice(&frame.body);
    bytes.push(0);
    bytes
}

/// A byte of an unescaped header (CONNECTED): a line stays a line, and
/// no control byte (a NUL would end the frame) gets through.
fn line_safe(byte: u8) -> u8 {
    if byte.is_ascii_control() { b' ' } else { byte }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode_all(decoder: &mut Decoder) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Decoded::Frame(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = Decoder::new(64 * 1024);
        decoder.push(bytes)?;
        decode_all(&mut decoder)
    }

    #[test]
    fn what_stompjs_sends_on_connect_is_read() {
        let frames = decode(b"CONNECT\r\naccept-version:1.2,1.1,1.0\r\nheart-beat:10000,10000\r\n\r\n\0").unwrap();
        assert_eq!(frames.len(), 1);
        let connect = &frames[0];
        assert_eq!(connect.command, Command::Connect);
        assert_eq!(connect.header("accept-version"), Some("1.2,1.1,1.0"));
        assert_eq!(connect.header("heart-beat"), Some("10000,10000"));
        assert_eq!(connect.header("host"), None);
        assert!(connect.body.is_empty(), "{connect:?}");
        let send = &decode(b"SEND\r\ndestination:/topic/a\r\n\r\n{\"x\":1}\0").unwrap()[0];
        assert_eq!(send.header("destination"), Some("/topic/a"));
        assert_eq!(send.body, b"{\"x\":1}");
        assert_eq!(
            Version::negotiate(connect.header("accept-version")),
            Some(Version::V1_2)
        );
        assert_eq!(Version::negotiate(Some("1.1,1.0")), Some(Version::V1_1));
        assert_eq!(Version::negotiate(Some("1.0")), None);
        assert_eq!(Version::negotiate(None), None);
    }

    #[test]
    fn connect_headers_are_not_unescaped_and_a_passcode_keeps_its_backslashes() {
        let frames = decode(b"CONNECT\naccept-version:1.1\npasscode:a\\tb:c\n\n\0").unwrap();
        assert_eq!(frames[0].header("passcode"), Some("a\\tb:c"));
        // The same header in a SEND is an undefined escape.
        let error = decode(b"SEND\ndestination:/topic/a\\tb\n\n\0").unwrap_err();
        assert!(matches!(error, FrameError::UndefinedEscape { .. }), "{error}");
        assert!(error.to_string().contains(r"\t"), "{error}");
    }

    #[test]
    fn heart_beats_between_frames_are_skipped_and_a_piece_may_hold_several_frames() {
        let frames =
            decode(b"\n\r\n\nSEND\ndestination:/topic/a\n\nhi\0\nSEND\ndestination:/topic/b\n\nho\0\n").unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].body, b"hi");
        assert_eq!(frames[1].header("destination"), Some("/topic/b"));
        assert_eq!(frames[1].body, b"ho");
    }

    #[test]
    fn a_frame_split_into_pieces_of_any_size_is_read_once_whole() {
        let mut body = vec![b'x'; 40_000];
        body[17] = b'\n';
        let frame = Frame::new(Command::Send)
            .with_header("destination", "/topic/chat/room/42")
            .with_body(body);
        let bytes = encode(&frame, Version::V1_1);
        for piece in [1, 2, 3, 7, 16 * 1024, bytes.len()] {
            let mut decoder = Decoder::new(64 * 1024);
            let mut frames = Vec::new();
            for chunk in bytes.chunks(piece) {
                decoder.push(chunk).unwrap();
                frames.extend(decode_all(&mut decoder).unwrap());
            }
            assert_eq!(frames, vec![frame.clone()], "pieces of {piece}");
        }
    }

    #[test]
    fn content_length_allows_a_nul_in_the_body_and_must_be_followed_by_nul() {
        let frames = decode(b"SEND\ndestination:/topic/a\ncontent-length:3\n\na\0b\0").unwrap();
        assert_eq!(frames[0].body, b"a\0b");
        assert_eq!(
            decode(b"SEND\ncontent-length:2\n\nabc\0").unwrap_err(),
            FrameError::NoNulAfterBody { length: 2 }
        );
        assert!(matches!(
            decode(b"SEND\ncontent-length:two\n\nab\0").unwrap_err(),
            FrameError::BadContentLength(_)
        ));
    }

    #[test]
    fn frames_over_the_limit_are_refused_however_they_arrive() {
        let mut decoder = Decoder::new(1024);
        decoder.push(b"SEND\ndestination:/topic/a\n\n").unwrap();
        let error = (0..40)
            .find_map(|_| decoder.push(&[b'x'; 64]).err())
            .expect("the limit was never applied");
        assert_eq!(error, FrameError::TooLarge { limit: 1024 });
        assert!(error.to_string().contains("RELAY_MAX_FRAME_BYTES"), "{error}");
        // A content-length over the limit is refused before the body comes.
        let mut decoder = Decoder::new(1024);
        decoder.push(b"SEND\ncontent-length:5000\n\n").unwrap();
        assert_eq!(decoder.next_frame(), Err(FrameError::TooLarge { limit: 1024 }));
        // Many small frames in one piece are within the limit.
        let one = encode(&Frame::new(Command::Send).with_body("y"), Version::V1_2);
        let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 200).collect();
        let mut decoder = Decoder::new(1024);
        decoder.push(&many).unwrap();
        assert_eq!(decode_all(&mut decoder).unwrap().len(), 200);
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let cases: [(&[u8], &str); 4] = [
            (b"HELLO\n\n\0", "unknown STOMP command \"HELLO\""),
            (b"SEND\ndestination\n\n\0", "has no ':'"),
            (b"SEND\n\0", "before the blank line"),
            (b"SEND\nd\xffx:1\n\n\0", "must be UTF-8"),
        ];
        for (bytes, expected) in cases {
            let error = decode(bytes).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} lacks {expected}");
        }
        // An escape 1.1 lacks.
        let mut decoder = Decoder::new(1024);
        decoder.set_version(Version::V1_1);
        decoder.push(b"SEND\nx:a\\rb\n\n\0").unwrap();
        let error = decoder.next_frame().unwrap_err().to_string();
        assert!(error.contains("STOMP 1.1 does not define"), "{error}");
    }

    #[test]
    fn a_repeated_header_keeps_its_first_value() {
        let frames = decode(b"SEND\ndestination:/topic/first\ndestination:/topic/second\n\n\0").unwrap();
        assert_eq!(frames[0].header("destination"), Some("/topic/first"));
        assert_eq!(frames[0].headers.len(), 2);
    }

    #[test]
    fn connected_stays_one_line_per_header_whatever_the_values_hold() {
        let frame = Frame::new(Command::Connected).with_header("user-name", "eve\nERROR:x");
        let frames = decode(&encode(&frame, Version::V1_2)).unwrap();
        assert_eq!(frames[0].headers, vec![("user-name".into(), "eve ERROR:x".into())]);
    }

    fn any_frame(values: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = Frame> {
        (
            prop::sample::select(Command::ALL.to_vec()),
            prop::collection::vec(("[a-z][a-z-]{0,8}", values), 0..6),
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(command, headers, body)| {
                let mut frame = Frame::new(command);
                for (name, value) in headers {
                    frame = frame.with_header(name, value);
                }
                // The body is read up to its content-length.
                frame
                    .headers
                    .insert(0, ("content-length".into(), body.len().to_string()));
                frame.with_body(body)
            })
    }

    #[test]
    fn no_header_of_a_server_frame_can_carry_a_nul_or_another_control_character() {
        for version in [Version::V1_1, Version::V1_2] {
            let escaped = escape("evil\0ERROR\nmessage:x\u{7}", version);
            assert!(
                !escaped.contains(|character: char| character.is_control()),
                "{escaped:?}"
            );
            assert_eq!(escaped, "evil\u{FFFD}ERROR\\nmessage\\cx\u{FFFD}");
        }
        let frame = Frame::new(Command::Connected).with_header("user-name", "a\0b\rc");
        assert_eq!(encode(&frame, Version::V1_2), b"CONNECTED\nuser-name:a b c\n\n\0");
    }

    proptest! {
        #[test]
        fn escaping_round_trips_in_1_2(text in "\\PC*|[\\\\:\r\na-z]{0,20}") {
            let escaped = escape(&text, Version::V1_2);
            prop_assert!(!escaped.contains(['\r', '\n', ':']));
            prop_assert_eq!(unescape(&escaped, Version::V1_2).unwrap(), text.as_str());
        }

        #[test]
        fn escaping_round_trips_in_1_1_for_text_without_cr(text in "[^\\p{Cc}]*|[\\\\:\na-z]{0,20}") {
            let escaped = escape(&text, Version::V1_1);
            prop_assert!(!escaped.contains(['\r', '\n', ':']));
            prop_assert_eq!(unescape(&escaped, Version::V1_1).unwrap(), text.as_str());
        }

        #[test]
        fn frames_round_trip_through_any_split(
            frames in prop::collection::vec(any_frame("[\\\\:\na-z0-9 ]{0,12}"), 1..4),
            piece in 1usize..64,
            version in prop::sample::select(vec![Version::V1_1, Version::V1_2]),
        ) {
            let bytes: Vec<u8> = frames.iter().flat_map(|frame| {
                let mut one = encode(frame, version);
                one.push(b'\n');
                one
            }).collect();
            let mut decoder = Decoder::new(64 * 1024);
            decoder.set_version(version);
            let mut decoded = Vec::new();
            for chunk in bytes.chunks(piece) {
                decoder.push(chunk).unwrap();
                decoded.extend(decode_all(&mut decoder).unwrap());
            }
            // CONNECT-like frames are not escaped: their LFs became spaces.
            let expected: Vec<Frame> = frames.into_iter().map(|mut frame| {
                if !frame.command.escapes() {
                    for (name, value) in &mut frame.headers {
                        *name = name.replace('\n', " ");
                        *value = value.replace('\n', " ");
                    }
                }
                frame
            }).collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn arbitrary_bytes_are_read_or_refused_never_a_panic(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..8),
        ) {
            let mut decoder = Decoder::new(256);
            for piece in pieces {
                if decoder.push(&piece).is_err() {
                    break;
                }
                while let Ok(Decoded::Frame(_)) = decoder.next_frame() {}
            }
        }
    }
}
