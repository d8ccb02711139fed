//! A half-duplex DL/T 645 link: a serial port (RS-485) or a TCP serial server, one
//! outstanding request at a time, reopened after any I/O error.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use qingnuan_shared::dlt645::{Address, Frame, FrameReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::config::Parity;

/// A byte stream to meters.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Serial line settings.
#[derive(Debug, Clone)]
pub struct SerialSettings {
    /// Device path.
    pub device: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits, 7 or 8.
    pub data_bits: u8,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

/// Where a link goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// `host:port` of a serial server.
    Tcp(String),
    /// A local serial device.
    Serial(SerialSettings),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => f.write_str(a),
            Target::Serial(s) => write!(f, "{}", s.device.display()),
        }
    }
}

/// Why an exchange produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Nothing (complete) came back in time.
    #[error("timeout")]
    Timeout,
    /// Bytes came back, but no valid frame from the meter.
    #[error("bad frame")]
    BadFrame,
    /// The link could not be opened or broke.
    #[error("link: {0}")]
    Io(#[from] io::Error),
}

/// Opens a serial port with the given line settings.
pub fn open_serial(s: &SerialSettings) -> io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = if s.data_bits == 7 {
        tokio_serial::DataBits::Seven
    } else {
        tokio_serial::DataBits::Eight
    };
    let stop_bits = if s.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let path = s.device.to_string_lossy().into_owned();
    tokio_serial::new(path, s.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(io::Error::other)
}

/// One link with its (re)opened stream.
pub struct Link {
    target: Target,
    stream: Option<Box<dyn Stream>>,
    /// Response timeout.
    timeout: Duration,
    /// Longest silence inside a reply.
    gap: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("target", &self.target)
            .field("open", &self.stream.is_some())
            .finish()
    }
}

impl Link {
    /// A link, opened lazily on first use.
    pub fn new(target: Target, timeout: Duration, gap: Duration) -> Self {
        Self {
            target,
            stream: None,
            timeout,
            gap,
        }
    }

    /// Where the link goes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn stream(&mut self) -> Result<&mut Box<dyn Stream>, LinkError> {
        if self.stream.is_none() {
            let s: Box<dyn Stream> = match &self.target {
                Target::Tcp(addr) => {
                    let s = timeout(
                        self.timeout.max(Duration::from_secs(2)),
                        TcpStream::connect(addr.as_str()),
                    )
                    .await
                    .map_err(|_| LinkError::Timeout)??;
                    let _ = s.set_nodelay(true);
                    tracing::info!(target = %addr, "connected to serial server");
                    Box::new(s)
                }
                Target::Serial(cfg) => Box::new(open_serial(cfg)?),
            };
            self.stream = Some(s);
        }
        self.stream.as_mut().ok_or(LinkError::Timeout)
    }

    /// Sends `request` and returns the first reply frame whose address matches
    /// `expect` (wildcards allowed). Echoes of our own command and frames of other
    /// meters are skipped; stale bytes from an earlier late reply are dropped first.
    pub async fn exchange(&mut self, request: &[u8], expect: &Address) -> Result<Frame, LinkError> {
        let result = self.exchange_inner(request, expect).await;
        if let Err(LinkError::Io(e)) = &result {
            tracing::warn!(target = %self.target, error = %e, "link broke; reopening on the next request");
            self.stream = None;
        }
        result
    }

    async fn exchange_inner(
        &mut self,
        request: &[u8],
        expect: &Address,
    ) -> Result<Frame, LinkError> {
        let (resp_timeout, gap) = (self.timeout, self.gap);
        let s = self.stream().await?;
        let mut buf = [0u8; 256];
        // Drop whatever is pending (a reply that came after its timeout).
        loop {
            match timeout(Duration::ZERO, s.read(&mut buf)).await {
                Ok(Ok(0)) => return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => break,
            }
        }
        s.write_all(request).await?;
        s.flush().await?;
        let start = Instant::now();
        let end = start + resp_timeout;
        let mut reader: FrameReader = FrameReader::new();
        let mut saw_bad = false;
        let mut last_byte: Option<Instant> = None;
        loop {
            let mut deadline = end;
            if let Some(t) = last_byte {
                if !gap.is_zero() {
                    deadline = deadline.min(t + gap);
                }
            }
            let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => {
                    return Err(if saw_bad {
                        LinkError::BadFrame
                    } else {
                        LinkError::Timeout
                    })
                }
                Ok(Ok(0)) => return Err(LinkError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.into()),
            };
            last_byte = Some(Instant::now());
            let mut found = None;
            reader.push(buf.get(..n).unwrap_or(&[]), |r| match r {
                Ok(f) if found.is_none() && f.control.is_reply() && expect.matches(&f.address) => {
                    found = Some(f)
                }
                Ok(_) => {}
                Err(_) => saw_bad = true,
            });
            if let Some(f) = found {
                return Ok(f);
            }
            if reader.buffered() == 0 {
                // Only skipped frames so far: a new reply may still come, with a fresh gap.
                last_byte = None;
            }
        }
    }
}
