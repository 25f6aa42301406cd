//! `ufsd commit` of a container or mount: pauses a live mount's writes through its control
//! socket while the upper layer is read, and reads again when a file written through FUSE
//! passthrough (which the pause cannot hold) changed under the reader.

use log::warn;

use super::{ContainerResult, Target};
use crate::image::ImageError;
use crate::image::commit::{CommitOptions, Committed, commit};
use crate::image::store::{Image, Store};
use crate::mount::control::ControlClient;

/// How many times a commit is tried when files keep changing while being read.
pub const ATTEMPTS: u32 = 5;

/// Commits `target` as a new image on `parent`. A live mount is paused (unless `pause` is
/// false) for the whole commit and resumed afterwards, also when the commit fails; if this
/// process dies meanwhile the daemon resumes by itself.
pub fn commit_target(
    store: &Store,
    target: &Target,
    parent: Option<&Image>,
    opts: &CommitOptions<'_>,
    pause: bool,
) -> ContainerResult<Committed> {
    let mut attempt = 1;
    loop {
        let paused = match &target.live {
            Some(m) if pause => Some(ControlClient::connect(m)?.pause()?),
            _ => None,
        };
        let result = commit(store, &target.upper, &target.lowers, parent, opts);
        if let Some(p) = paused
            && let Err(e) = p.resume()
        {
            // Closing the connection resumes too; say so rather than fail a commit.
            warn!("resuming the mount: {e}");
        }
        match result {
            Err(ImageError::ChangedWhileRead(path)) if attempt < ATTEMPTS => {
                warn!(
                    "{} changed while being read (written through FUSE passthrough, or not paused); reading again",
                    path.display()
                );
                attempt += 1;
            }
            Err(ImageError::ChangedWhileRead(path)) => {
                return Err(super::ContainerError::Refused(format!(
                    "{} kept changing while being read ({ATTEMPTS} attempts): a process writes \
                     it (through FUSE passthrough, or the mount was not paused); stop the \
                     writer and commit again",
                    path.display()
                )));
            }
            other => return Ok(other?),
        }
    }
}
