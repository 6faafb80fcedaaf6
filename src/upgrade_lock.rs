//! One running tollgate per upgrade socket. On `SIGQUIT` pingora hands its listening sockets to
//! whatever process waits on `[server] upgrade_sock`, so two instances sharing the path (both on
//! the default) could hand their sockets to each other's successor. Each instance holds an
//! exclusive `flock` on `UPGRADE_SOCK.lock` for its lifetime (the kernel drops it when the
//! process ends, however it ends), and a second instance is refused at start.
//!
//! With `--upgrade` the old process still holds the lock while it drains: the new one takes the
//! lock over in a background thread as soon as the old one exits.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Held until the process exits.
static HELD: OnceLock<Flock<File>> = OnceLock::new();

/// The lock file of an upgrade socket: `PATH.lock`, next to it.
pub fn lock_path(upgrade_sock: &Path) -> PathBuf {
    let mut path = OsString::from(upgrade_sock.as_os_str());
    path.push(".lock");
    PathBuf::from(path)
}

/// Another running tollgate owns the upgrade socket.
#[derive(Debug, thiserror::Error)]
#[error(
    "upgrade socket {} is in use by a running tollgate ({}, lock file {}): give \
     each instance on a host its own `[server] upgrade_sock` and `[admin] address` \
     (docs/operations/admin-reload-upgrade.md); to replace that process, start this \
     one with `--upgrade`",
    upgrade_sock.display(),
    owner.map_or_else(|| "another process".to_string(), |pid| format!("pid {pid}")),
    lock_file.display()
)]
pub struct SocketInUse {
    /// The upgrade socket.
    pub upgrade_sock: PathBuf,
    /// Its lock file.
    pub lock_file: PathBuf,
    /// The owner's pid, when its lock file says.
    pub owner: Option<u32>,
}

/// Makes this process the owner of `upgrade_sock`, or explains which process is. With
/// `upgrade`, waits in the background for the process being replaced to let go.
pub fn acquire(upgrade_sock: &Path, upgrade: bool) -> Result<(), SocketInUse> {
    let path = lock_path(upgrade_sock);
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) => {
            // pingora only needs the socket for an upgrade, so a gateway that cannot create
            // files there still serves; it just cannot tell whether it shares the socket.
            tracing::warn!(path = %path.display(), error = %e,
                "cannot create the upgrade socket's lock file; another tollgate using the same `[server] upgrade_sock` would not be detected");
            return Ok(());
        }
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => {
            hold(lock);
            Ok(())
        }
        Err((file, Errno::EWOULDBLOCK)) if upgrade => {
            wait_for_predecessor(file, path);
            Ok(())
        }
        Err((mut file, Errno::EWOULDBLOCK)) => Err(SocketInUse {
            upgrade_sock: upgrade_sock.to_path_buf(),
            owner: owner_pid(&mut file),
            lock_file: path,
        }),
        Err((_, errno)) => {
            tracing::warn!(path = %path.display(), error = %errno,
                "cannot lock the upgrade socket's lock file; another tollgate using the same `[server] upgrade_sock` would not be detected");
            Ok(())
        }
    }
}

/// Keeps the lock for the rest of the process and writes our pid in the file for the error
/// message of the next instance that tries.
fn hold(lock: Flock<File>) {
    let mut file: &File = &lock;
    let pid = std::process::id();
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"));
    if let Err(e) = written {
        tracing::debug!(error = %e, "pid not written to the upgrade lock file");
    }
    let _ = HELD.set(lock);
}

/// Takes the lock once the process being upgraded exits (it keeps it while it drains).
fn wait_for_predecessor(file: File, path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("upgrade-lock".into())
        .spawn(move || match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => {
                hold(lock);
                tracing::debug!(path = %path.display(), "upgrade socket lock taken over");
            }
            Err((_, errno)) => {
                tracing::warn!(path = %path.display(), error = %errno, "cannot take over the upgrade socket's lock");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread taking over the upgrade socket's lock");
    }
}

fn owner_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_sits_next_to_the_socket() {
        assert_eq!(
            lock_path(Path::new("/run/tollgate/upgrade.sock")),
            Path::new("/run/tollgate/upgrade.sock.lock")
        );
    }
}
