//! libzmq messages that share `Bytes` buffers instead of copying them.
//!
//! A relayed update goes to every other client: copying its frames into a
//! fresh libzmq message per recipient cost a `malloc` and a `memcpy` each,
//! a fifth of the server's time at saturation. Here the received buffer is
//! wrapped once, and each recipient gets a libzmq copy of it, which only
//! bumps a reference count.

use std::os::raw::c_void;

use bytes::Bytes;

/// Frames this short are copied: libzmq keeps them inside the message
/// itself (its "very small message" form, up to 33 bytes on 64-bit), which
/// costs less than sharing a buffer.
const INLINE_MAX: usize = 32;

/// One libzmq message, closed when dropped.
pub struct Frame(zmq_sys::zmq_msg_t);

/// Called by libzmq, possibly on its I/O thread, when the last copy of a
/// shared message is closed.
unsafe extern "C" fn release(_data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the box leaked in `Frame::share`, and libzmq calls
    // this exactly once per `zmq_msg_init_data`.
    drop(unsafe { Box::from_raw(hint.cast::<Bytes>()) });
}

fn last_error() -> zmq::Error {
    zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() })
}

impl Frame {
    /// A message over `bytes` (copied when small, shared otherwise).
    pub fn share(bytes: &Bytes) -> Result<Frame, zmq::Error> {
        let mut msg = zmq_sys::zmq_msg_t { __: [0; 64] };
        let len = bytes.len();
        if len <= INLINE_MAX {
            // SAFETY: `msg` is a fresh message of `len` bytes we fill at once.
            unsafe {
                if zmq_sys::zmq_msg_init_size(&mut msg, len) == -1 {
                    return Err(last_error());
                }
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), zmq_sys::zmq_msg_data(&mut msg).cast(), len);
            }
            return Ok(Frame(msg));
        }
        // The box keeps the buffer alive (a reference, not a copy) until
        // libzmq releases it; `Bytes` never moves its data.
        let owner = Box::into_raw(Box::new(bytes.clone()));
        let data = bytes.as_ptr().cast_mut().cast::<c_void>();
        // SAFETY: `data` points at `len` bytes owned by `owner`, which
        // `release` frees; libzmq never writes through it.
        let rc = unsafe { zmq_sys::zmq_msg_init_data(&mut msg, data, len, Some(release), owner.cast()) };
        if rc == -1 {
            let error = last_error();
            // SAFETY: libzmq failed before taking `owner` over.
            drop(unsafe { Box::from_raw(owner) });
            return Err(error);
        }
        Ok(Frame(msg))
    }

    /// Another message over the same buffer: a reference count bump.
    pub fn copy(&mut self) -> Result<Frame, zmq::Error> {
        let mut msg = zmq_sys::zmq_msg_t { __: [0; 64] };
        // SAFETY: both are valid messages; libzmq marks `self` shared.
        unsafe {
            if zmq_sys::zmq_msg_init(&mut msg) == -1 || zmq_sys::zmq_msg_copy(&mut msg, &mut self.0) == -1 {
                return Err(last_error());
            }
        }
        Ok(Frame(msg))
    }

    /// Hands the message to `socket`'s queue (libzmq then owns it).
    pub fn send(mut self, socket: &mut zmq::Socket, flags: i32) -> Result<(), zmq::Error> {
        // SAFETY: a valid message and socket; on success libzmq empties the
        // message, so the close in `drop` only releases it on failure.
        let rc = unsafe { zmq_sys::zmq_msg_send(&mut self.0, socket.as_mut_ptr(), flags) };
        if rc == -1 { Err(last_error()) } else { Ok(()) }
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: every `Frame` holds an initialised message.
        unsafe {
            zmq_sys::zmq_msg_close(&mut self.0);
        }
    }
}

/// A received libzmq message as `Bytes`, without copying it out.
pub fn into_bytes(message: zmq::Message) -> Bytes {
    struct Owner(zmq::Message);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    if message.len() <= INLINE_MAX {
        // Inline messages live in the struct: a copy is as cheap as a box.
        return Bytes::copy_from_slice(&message);
    }
    Bytes::from_owner(Owner(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer shared with libzmq is freed once every copy is sent and
    /// delivered, and the bytes arrive intact, small and large alike.
    #[test]
    fn shared_frames_arrive_intact_and_release_their_buffer() {
        let ctx = zmq::Context::new();
        let mut push = ctx.socket(zmq::PUSH).expect("socket");
        let pull = ctx.socket(zmq::PULL).expect("socket");
        pull.bind("inproc://frames").expect("bind");
        push.connect("inproc://frames").expect("connect");
        let large = Bytes::from(vec![7u8; 4096]);
        let small = Bytes::from_static(b"tiny");
        {
            let mut master = Frame::share(&large).expect("share");
            for _ in 0..3 {
                master.copy().expect("copy").send(&mut push, 0).expect("send");
            }
            Frame::share(&small).expect("share").send(&mut push, 0).expect("send");
        }
        for _ in 0..3 {
            let mut msg = zmq::Message::new();
            pull.recv(&mut msg, 0).expect("recv");
            let got = into_bytes(msg);
            assert_eq!(got, large);
        }
        let mut msg = zmq::Message::new();
        pull.recv(&mut msg, 0).expect("recv");
        assert_eq!(into_bytes(msg), small);
        // Every libzmq reference is gone: ours is the only one left.
        assert!(large.is_unique(), "libzmq still holds the shared buffer");
    }
}
