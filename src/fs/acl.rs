//! POSIX ACL inheritance for new objects, as `posix_acl_create` does in the kernel: in a
//! directory with a default ACL a new object gets that ACL narrowed by the requested mode,
//! and the caller's umask does not apply. The daemon does it itself because an object that
//! replaces a whiteout is built in the work directory, where the upper filesystem has no
//! default ACL to inherit.

/// The xattr holding a directory's default ACL.
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";
/// The xattr holding an object's access ACL.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// What a new object inherits from its directory's default ACL.
#[derive(Debug, PartialEq, Eq)]
pub struct Inherited {
    /// The permission bits to create it with (set-id and sticky bits kept as requested).
    pub mode: u32,
    /// Its access ACL, when the mode alone cannot say it (named users or groups, a mask).
    pub access: Option<Vec<u8>>,
}

/// Applies `default_acl` (an xattr value) to a new object requested with `mode`; `None`
/// when the value is not a well-formed ACL, in which case the umask applies as usual.
pub fn inherit(default_acl: &[u8], mode: u32) -> Option<Inherited> {
    let mut entries = parse(default_acl)?;
    let mut mode = mode;
    let mut extended = false;
    let mut group_obj = None;
    let mut mask = None;
    for (i, (tag, perm, _)) in entries.iter_mut().enumerate() {
        match *tag {
            USER_OBJ => {
                *perm &= ((mode >> 6) & 7) as u16;
                mode = (mode & !0o700) | (u32::from(*perm) << 6);
            }
            USER | GROUP => extended = true,
            GROUP_OBJ => group_obj = Some(i),
            MASK => {
                mask = Some(i);
                extended = true;
            }
            OTHER => {
                *perm &= (mode & 7) as u16;
                mode = (mode & !0o7) | u32::from(*perm);
            }
            _ => return None,
        }
    }
    // The group class is the mask if there is one, else the owning group's entry.
    let class = mask.or(group_obj)?;
    let perm = &mut entries[class].1;
    *perm &= ((mode >> 3) & 7) as u16;
    mode = (mode & !0o70) | (u32::from(*perm) << 3);
    Some(Inherited {
        mode,
        access: extended.then(|| serialize(&entries)),
    })
}

/// The entries of an ACL xattr value: (tag, permissions, id).
fn parse(value: &[u8]) -> Option<Vec<(u16, u16, u32)>> {
    let (version, rest) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != VERSION || rest.is_empty() || rest.len() % 8 != 0 {
        return None;
    }
    rest.chunks_exact(8)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u16::from_le_bytes([e[2], e[3]]);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            (perm <= 7).then_some((tag, perm, id))
        })
        .collect()
}

fn serialize(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ID: u32 = u32::MAX;

    #[test]
    fn a_named_entry_keeps_the_acl_and_the_mask_takes_the_group_bits() {
        // user::rwx user:1002:rw- group::r-x mask::rwx other::r-x, a file asked as 0666.
        let default = serialize(&[
            (USER_OBJ, 7, NO_ID),
            (USER, 6, 1002),
            (GROUP_OBJ, 5, NO_ID),
            (MASK, 7, NO_ID),
            (OTHER, 5, NO_ID),
        ]);
        let got = inherit(&default, 0o100666).unwrap();
        assert_eq!(got.mode, 0o100664);
        assert_eq!(
            parse(&got.access.unwrap()).unwrap(),
            [
                (USER_OBJ, 6, NO_ID),
                (USER, 6, 1002),
                (GROUP_OBJ, 5, NO_ID),
                (MASK, 6, NO_ID),
                (OTHER, 4, NO_ID),
            ]
        );
    }

    #[test]
    fn a_minimal_acl_is_only_a_mode() {
        let default = serialize(&[
            (USER_OBJ, 7, NO_ID),
            (GROUP_OBJ, 0, NO_ID),
            (OTHER, 5, NO_ID),
        ]);
        let got = inherit(&default, 0o4777).unwrap();
        assert_eq!(
            got,
            Inherited {
                mode: 0o4705,
                access: None
            }
        );
    }

    #[test]
    fn malformed_values_inherit_nothing() {
        assert_eq!(inherit(b"", 0o666), None);
        assert_eq!(inherit(&[2, 0, 0, 0], 0o666), None);
        assert_eq!(inherit(&[1, 0, 0, 0, 1, 0, 7, 0, 0, 0, 0, 0], 0o666), None);
        assert_eq!(inherit(&[2, 0, 0, 0, 1, 0, 7, 0, 0, 0, 0], 0o666), None);
        // No group entry at all.
        assert_eq!(inherit(&serialize(&[(USER_OBJ, 7, NO_ID)]), 0o666), None);
    }
}
