//! Normalised tar headers for [`super::write_layer`]: POSIX ustar headers, preceded by a
//! PAX extended header when a path or link target is longer than its ustar field or the
//! entry has xattrs.
//!
//! Every field is set explicitly so the same entry always gives the same bytes: numeric
//! uid and gid (no user or group names), the mode as given, mtime in whole seconds, no
//! atime or ctime, device numbers only for devices. Numbers too large for their octal
//! field use the base-256 form that GNU tar, Go and the tar crate all read. PAX records
//! are sorted by key. Paths and xattr values are raw bytes.

use std::io::{self, Write};

use tar::{EntryType, Header};

/// Size of a tar block.
pub const BLOCK: usize = 512;
/// Longest path or link target the ustar `name` / `linkname` fields hold.
const USTAR_NAME_MAX: usize = 100;
/// Name of PAX extended header entries (informational; readers apply the records to the
/// entry that follows).
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";
/// Prefix of PAX records carrying xattrs (the form GNU tar, Go and containerd use).
pub const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";

/// One entry's header, as [`write_entry_header`] writes it.
pub struct EntryHeader<'a> {
    /// Path in the archive (directories end with `/`).
    pub path: &'a [u8],
    pub kind: EntryType,
    /// Permission and set-id bits (`st_mode & 07777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch (already clamped by the caller).
    pub mtime: u64,
    /// Size of the data that follows (regular files only).
    pub size: u64,
    /// Link target of a symlink or hard link.
    pub link: Option<&'a [u8]>,
    /// Major and minor number of a device.
    pub dev: Option<(u32, u32)>,
    /// xattrs to record, sorted by name.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record
/// including its own digits.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while rest + len.to_string().len() != len {
        len = rest + len.to_string().len();
    }
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(len.to_string().as_bytes());
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Zero bytes that pad `len` bytes of data to a whole block.
pub fn padding(len: u64) -> usize {
    let rem = (len % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// Copies `value` into a fixed header field, truncating it (the full value is then in a
/// PAX record).
fn set_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A blank ustar header with the given type, size and every numeric field set.
fn base_header(kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Writes a whole header block with its checksum.
fn write_block(out: &mut impl Write, mut h: Header) -> io::Result<u64> {
    h.set_cksum();
    out.write_all(h.as_bytes())?;
    Ok(BLOCK as u64)
}

/// Writes the header of one entry (with its PAX header first when needed) and returns the
/// number of bytes written. The caller writes the data and its padding.
pub fn write_entry_header(out: &mut impl Write, e: &EntryHeader<'_>) -> io::Result<u64> {
    let mut records: Vec<(Vec<u8>, &[u8])> = Vec::new();
    if let Some(link) = e.link.filter(|l| l.len() > USTAR_NAME_MAX) {
        records.push((b"linkpath".to_vec(), link));
    }
    if e.path.len() > USTAR_NAME_MAX {
        records.push((b"path".to_vec(), e.path));
    }
    for (name, value) in e.xattrs {
        let mut key = XATTR_PAX_PREFIX.to_vec();
        key.extend_from_slice(name);
        records.push((key, value));
    }
    records.sort();
    let mut written = 0;
    if !records.is_empty() {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut h = base_header(EntryType::XHeader, data.len() as u64);
        if let Some(ustar) = h.as_ustar_mut() {
            set_field(&mut ustar.name, PAX_HEADER_NAME);
        }
        written += write_block(out, h)?;
        out.write_all(&data)?;
        let pad = padding(data.len() as u64);
        out.write_all(&[0u8; BLOCK][..pad])?;
        written += (data.len() + pad) as u64;
    }
    let mut h = base_header(e.kind, e.size);
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    if let Some(ustar) = h.as_ustar_mut() {
        set_field(&mut ustar.name, e.path);
        if let Some(link) = e.link {
            set_field(&mut ustar.linkname, link);
        }
        if let Some((major, minor)) = e.dev {
            ustar.set_device_major(major);
            ustar.set_device_minor(minor);
        }
    }
    written += write_block(out, h)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for (k, v) in [
            (&b"path"[..], &b"x"[..]),
            (b"path", &[b'a'; 92][..]),
            (b"path", &[b'a'; 93][..]),
            (b"path", &[b'a'; 994][..]),
            (b"SCHILY.xattr.user.k", b"\x00\xff\n"),
        ] {
            let r = pax_record(k, v);
            let sp = r.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&r[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "{}", r.escape_ascii());
        }
        assert_eq!(pax_record(b"path", b"abc"), b"12 path=abc\n");
    }

    #[test]
    fn headers_read_back_with_the_tar_crate() {
        let long: Vec<u8> = [b"d/".as_slice(), &[b'n'; 150], b"\xff"].concat();
        let xattrs = vec![
            (b"user.b".to_vec(), b"2".to_vec()),
            (b"user.a".to_vec(), b"\x00bin".to_vec()),
        ];
        let mut buf = Vec::new();
        let n = write_entry_header(
            &mut buf,
            &EntryHeader {
                path: &long,
                kind: EntryType::Symlink,
                mode: 0o777,
                uid: 3_000_000,
                gid: 7,
                mtime: 1_700_000_000,
                size: 0,
                link: Some(&[b't'; 120]),
                dev: None,
                xattrs: &xattrs,
            },
        )
        .unwrap();
        write_entry_header(
            &mut buf,
            &EntryHeader {
                path: b"dev/null",
                kind: EntryType::Char,
                mode: 0o666,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
                link: None,
                dev: Some((1, 3)),
                xattrs: &[],
            },
        )
        .unwrap();
        assert_eq!(n as usize, buf.len() - BLOCK);
        buf.extend_from_slice(&[0; 1024]);
        let mut ar = tar::Archive::new(buf.as_slice());
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), &long[..]);
        assert_eq!(&*e.link_name_bytes().unwrap(), &[b't'; 120][..]);
        assert_eq!(e.header().uid().unwrap(), 3_000_000);
        assert_eq!(e.header().mode().unwrap(), 0o777);
        assert_eq!(e.header().username_bytes(), Some(&b""[..]));
        let pax: Vec<(Vec<u8>, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.key_bytes().to_vec(), r.value_bytes().to_vec())
            })
            .collect();
        let keys: Vec<&[u8]> = pax.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            keys,
            vec![
                &b"SCHILY.xattr.user.a"[..],
                b"SCHILY.xattr.user.b",
                b"linkpath",
                b"path"
            ]
        );
        assert_eq!(pax[0].1, b"\x00bin");
        let mut rest = Vec::new();
        e.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.header().device_major().unwrap(), Some(1));
        assert_eq!(e.header().device_minor().unwrap(), Some(3));
        assert!(entries.next().is_none());
    }
}
