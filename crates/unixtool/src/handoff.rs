//! The connection hand-over's wire (forkpool `--handoff`, its page says the
//! protocol): a `SOCK_SEQPACKET` Unix socket pair, one message per
//! connection, the message one byte (`c`) with the connection's descriptor
//! in `SCM_RIGHTS`. A worker sends its idle connections on it when told to
//! stop; forkpool sends them on to a worker of the new generation, which
//! receives them on the same kind of socket. Used by forkpool and the demo
//! app.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// The environment variable naming the worker's end.
pub const ENV: &str = "FORKPOOL_HANDOFF_FD";

/// The one byte of each message.
pub const BYTE: u8 = b'c';

/// A pair of connected `SOCK_SEQPACKET` sockets, both close-on-exec and
/// non-blocking.
pub fn pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
}

/// Send `conn` as one message. EAGAIN: the peer's queue is full.
pub fn send(sock: BorrowedFd, conn: BorrowedFd) -> Result<(), Errno> {
    let fds = [conn.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(&[BYTE])];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

/// What one receive got.
pub enum Received {
    /// A connection.
    Conn(OwnedFd),
    /// A message without a descriptor (ignored by the caller).
    Nothing,
    /// A message whose descriptor the kernel closed (MSG_CTRUNC): this
    /// process had no descriptor left for it (EMFILE). The connection is
    /// lost; the caller says so.
    Lost,
    /// Nothing waits now.
    Empty,
    /// The other end is closed (or the socket failed).
    Closed,
}

/// Receive one message, without waiting; every descriptor it carried but
/// the first is closed, so that none leaks.
pub fn recv(sock: BorrowedFd) -> Received {
    let mut byte = [0u8; 16];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Received::Empty,
            Err(_) => return Received::Closed,
            Ok(m) => break m,
        }
    };
    let mut got: Vec<OwnedFd> = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed this descriptor in
                    // this process for this message; nothing else owns it.
                    got.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
    let empty = msg.bytes == 0;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut got = got.into_iter();
    match got.next() {
        Some(fd) => Received::Conn(fd),
        None if empty => Received::Closed,
        None if truncated => Received::Lost,
        None => Received::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    const CHILD: &str = "UNIXTOOL_HANDOFF_LOST_CHILD";

    // The kernel closes a handed descriptor the receiver has no room for
    // and says so with MSG_CTRUNC: recv tells it as Lost, not as a message
    // without one. Run in a process of its own (the test binary again,
    // this one test alone), since the descriptor limit is the process's.
    #[test]
    fn a_descriptor_the_receiver_has_no_room_for_is_lost() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "handoff::tests::lost_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run by a_descriptor_the_receiver_has_no_room_for_is_lost"]
    fn lost_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let (a, b) = pair().unwrap();
        let (conn, _other) = pair().unwrap();
        send(a.as_fd(), conn.as_fd()).unwrap();
        send(a.as_fd(), conn.as_fd()).unwrap();
        // The lowest free descriptor as the soft limit: none left below it.
        let next = nix::unistd::dup(conn.as_raw_fd()).unwrap();
        nix::unistd::close(next).unwrap();
        let lowest = next as u64;
        let (_, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, lowest, hard)
            .unwrap();
        assert!(matches!(recv(b.as_fd()), Received::Lost));
        // With room again, the next message's descriptor arrives.
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            lowest + 1,
            hard,
        )
        .unwrap();
        assert!(matches!(recv(b.as_fd()), Received::Conn(_)));
        assert!(matches!(recv(b.as_fd()), Received::Empty));
    }
}
