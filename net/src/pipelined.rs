//! A connection that keeps many requests in flight: requests are written as
//! they come, a reader task matches responses to them by correlation id, and
//! a window bounds how many wait at once. Lives on the executor that opened
//! it; clones share the connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures::channel::oneshot;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use crate::client::{owned, produce_request, produced_offset, Connection, Response};
use crate::codec::{self, ApiKey, FrameDecoder, Message, PayloadBuilder, ERROR_RESPONSE_KEY};
use crate::error::{ErrorCode, NetError};
use crate::messages::ArchivedErrorResponse;

const READ_CHUNK_BYTES: usize = 256 << 10;

type Waiter = oneshot::Sender<Result<Response, NetError>>;

struct Inner {
    addr: String,
    writer: RefCell<Option<WriteHalf<TcpStream>>>,
    /// One request written at a time, so frames never interleave.
    writing: Semaphore,
    /// Requests waiting for their response, at most the window.
    window: Semaphore,
    waiting: RefCell<HashMap<u32, Waiter>>,
    next_correlation_id: Cell<u32>,
    /// Set when the reader stops: every later request fails with it.
    broken: RefCell<Option<String>>,
    reader: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader task holds the socket's read half: stop it, so the
        // socket closes with the last clone of the connection.
        if let Some(reader) = self.reader.borrow_mut().take() {
            reader.cancel();
        }
    }
}

#[derive(Clone)]
pub struct PipelinedConnection {
    inner: Rc<Inner>,
}

impl PipelinedConnection {
    /// Connects (with the version handshake) and allows `window` requests in
    /// flight.
    pub async fn connect(addr: &str, window: usize) -> Result<PipelinedConnection, NetError> {
        let stream = Connection::connect(addr).await?.into_stream();
        let (reader, writer) = stream.split();
        let inner = Rc::new(Inner {
            addr: addr.to_string(),
            writer: RefCell::new(Some(writer)),
            writing: Semaphore::new(1),
            window: Semaphore::new(window.max(1) as u64),
            waiting: RefCell::new(HashMap::new()),
            next_correlation_id: Cell::new(1),
            broken: RefCell::new(None),
            reader: RefCell::new(None),
        });
        let reading = glommio::spawn_local(read_responses(Rc::downgrade(&inner), reader)).detach();
        *inner.reader.borrow_mut() = Some(reading);
        Ok(PipelinedConnection { inner })
    }

    pub async fn request<M: Message>(
        &self,
        api_key: ApiKey,
        message: &M,
        payload: &PayloadBuilder<'_>,
    ) -> Result<Response, NetError> {
        let closed = || NetError::ConnectionClosed {
            addr: self.inner.addr.clone(),
        };
        let _slot = self.inner.window.acquire_permit(1).await.map_err(|_| closed())?;
        if self.inner.broken.borrow().is_some() {
            return Err(closed());
        }
        let id = self.inner.next_correlation_id.get();
        self.inner.next_correlation_id.set(id.wrapping_add(1));
        let mut head = Vec::new();
        codec::encode_request_head(api_key, 0, id, message, payload.len(), &mut head)?;
        let (tx, rx) = oneshot::channel();
        self.inner.waiting.borrow_mut().insert(id, tx);
        {
            let _turn = self.inner.writing.acquire_permit(1).await.map_err(|_| closed())?;
            let mut writer = self.inner.writer.borrow_mut().take().ok_or_else(closed)?;
            let written = async {
                writer.write_all(&head).await?;
                for slice in payload.slices() {
                    writer.write_all(slice).await?;
                }
                writer.flush().await
            }
            .await;
            *self.inner.writer.borrow_mut() = Some(writer);
            if let Err(source) = written {
                self.inner.waiting.borrow_mut().remove(&id);
                return Err(NetError::Io {
                    op: "write to",
                    addr: self.inner.addr.clone(),
                    source,
                });
            }
        }
        let response = rx.await.map_err(|_| closed())??;
        if response.api_key() == ERROR_RESPONSE_KEY {
            let error: &ArchivedErrorResponse = response.message("error response")?;
            return Err(NetError::Rejected {
                code: ErrorCode::from_code(error.error.to_native()),
                message: error.message.to_string(),
            });
        }
        Ok(response)
    }

    /// Produces batches to one partition (acks 1 or all); returns the base offset.
    pub async fn produce(&self, topic: &str, partition: u32, batches: &[u8], acks: i8) -> Result<u64, NetError> {
        let mut payload = PayloadBuilder::default();
        let request = produce_request(topic, partition, batches, acks, &mut payload)?;
        let response = self.request(ApiKey::Produce, &request, &payload).await?;
        produced_offset(&response)
    }
}

async fn read_responses(inner: std::rc::Weak<Inner>, mut reader: ReadHalf<TcpStream>) {
    let decoder = FrameDecoder::default();
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let reason = loop {
        loop {
            let Some(inner) = inner.upgrade() else { return };
            match decoder.response(&buffer) {
                Ok(Some((frame, used))) => {
                    let response = owned(&buffer, &frame, used);
                    let waiter = inner.waiting.borrow_mut().remove(&frame.correlation_id);
                    buffer.drain(..used);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(Ok(response));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    fail(&inner, e.to_string());
                    return;
                }
            }
        }
        let start = buffer.len();
        buffer.resize(start + READ_CHUNK_BYTES, 0);
        match reader.read(&mut buffer[start..]).await {
            Ok(0) => break "closed by the broker".to_string(),
            Ok(n) => buffer.truncate(start + n),
            Err(e) => break e.to_string(),
        }
    };
    if let Some(inner) = inner.upgrade() {
        fail(&inner, reason);
    }
}

fn fail(inner: &Inner, reason: String) {
    *inner.broken.borrow_mut() = Some(reason);
    let waiting: Vec<Waiter> = inner.waiting.borrow_mut().drain().map(|(_, w)| w).collect();
    for waiter in waiting {
        let _ = waiter.send(Err(NetError::ConnectionClosed {
            addr: inner.addr.clone(),
        }));
    }
}
