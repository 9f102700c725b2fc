//! Directories and files only the service user may read: the data directory
//! (0700), the SQLite index and the key files (0600). The modes are set
//! explicitly after creation, so they do not depend on the process's umask.
//! Only what Kastell creates is changed; an existing path keeps its mode.

use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents; each directory created is 0700.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => set_mode(dir, 0o700),
        // Made by another process in the meantime: its mode is its own.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(error) => Err(error),
    }
}

/// Creates `path` empty with mode 0600 unless it exists; `true` if created.
pub fn create_file(path: &Path) -> io::Result<bool> {
    match open_new(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

/// Writes a new file with mode 0600; fails if it exists.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = open_new(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn open_new(path: &Path) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    set_mode(path, 0o600)?;
    Ok(file)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

/// The group and other permission bits of `path` (`0` when only the owner has
/// any); always `0` where modes do not exist.
pub fn shared_mode_bits(path: &Path) -> io::Result<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o077)
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| 0)
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_paths_are_private_and_existing_ones_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        create_dir_all(&data).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&data), 0o700);
        let file = data.join("index.sqlite");
        assert!(create_file(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert!(!create_file(&file).unwrap());
        let key = data.join("k");
        write_new(&key, b"secret").unwrap();
        assert_eq!(mode(&key), 0o600);
        assert!(write_new(&key, b"again").is_err());
        assert_eq!(shared_mode_bits(&key).unwrap(), 0);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(shared_mode_bits(&key).unwrap(), 0o040);
        // An existing directory keeps its mode.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_dir_all(&data).unwrap();
        assert_eq!(mode(&data), 0o750);
    }
}
