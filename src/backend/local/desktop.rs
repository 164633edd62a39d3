//! The local backend's QGIS desktop: what a `qgis` server needs besides its files.
//!
//! The desktop is jupyter-remote-desktop-proxy 3.x under `jupyterhub-singleuser`: at the first
//! request to `<prefix>desktop/` jupyter-server-proxy runs TigerVNC's `vncserver` on a Unix
//! socket, which runs an *xstartup* script as the X session. The package's own script
//! (`share/xstartup`: `dbus-launch xfce4-session`) starts a bare Xfce desktop; it takes
//! another from `JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP` (read in its `setup_websockify`).
//! [`prepare`] writes [`XSTARTUP`] into the server's data directory and points that variable at
//! it, so that QGIS opens by itself on the desktop, as the server's user, with the server's
//! environment: its HOME (the user's directory), and `QGIS_GLOBAL_SETTINGS_FILE`, the seed
//! the hub wrote beside it (`policy::desktop`). The user's own `~/.vnc/xstartup` is not used:
//! the variable wins over it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::api::v1alpha1::WorkspaceKind;
use crate::policy::desktop::SETTINGS_FILE;

/// The variable jupyter-remote-desktop-proxy reads its X session script from.
pub const XSTARTUP_ENV: &str = "JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP";
/// The script's name in the server's data directory.
pub const XSTARTUP_FILE: &str = "xstartup";
/// The X session of a QGIS desktop: Xfce in a D-Bus session, with QGIS started on it (no
/// version check: the workspace may have no route to qgis.org). QGIS reads its seed from
/// `QGIS_GLOBAL_SETTINGS_FILE` in the environment. The same script is the qgis image's
/// (`images/qgis/xstartup`).
pub const XSTARTUP: &str = "#!/bin/sh\n\
# The X session of an Atelier QGIS desktop (JUPYTER_REMOTE_DESKTOP_PROXY_XSTARTUP): Xfce, with\n\
# QGIS started on it. QGIS reads its defaults from QGIS_GLOBAL_SETTINGS_FILE.\n\
cd \"$HOME\" || exit 1\n\
exec dbus-launch --exit-with-session sh -c 'qgis --noversioncheck & exec xfce4-session'\n";

/// Whether `kind` and the request's files make a QGIS desktop: the `qgis` kind, or the QGIS
/// seed among the files (the hub writes it for exactly the servers of a `qgis` profile).
pub fn is_desktop(kind: WorkspaceKind, files: &[&str]) -> bool {
    kind == WorkspaceKind::Qgis || files.contains(&SETTINGS_FILE)
}

/// For a desktop ([`is_desktop`]): writes [`XSTARTUP`] into `dir` (the server's data directory,
/// made 0700 when missing; the script 0700) and returns the variable that points the desktop at
/// it. Nothing for another kind.
pub fn prepare(
    kind: WorkspaceKind,
    files: &[&str],
    dir: &Path,
) -> std::io::Result<Vec<(String, String)>> {
    if !is_desktop(kind, files) {
        return Ok(Vec::new());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(XSTARTUP_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&path)?;
    file.write_all(XSTARTUP.as_bytes())?;
    Ok(vec![(
        XSTARTUP_ENV.to_owned(),
        path.to_string_lossy().into_owned(),
    )])
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_desktop_gets_its_session_script_and_others_nothing() {
        let tmp = std::env::temp_dir().join(format!("atelier-desktop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dir = tmp.join("alice.data");
        for kind in [
            WorkspaceKind::Jupyter,
            WorkspaceKind::R,
            WorkspaceKind::Rstudio,
        ] {
            assert!(prepare(kind, &["catalog.yaml"], &dir).unwrap().is_empty());
            assert!(!dir.exists(), "{kind:?}");
        }
        for (kind, files) in [
            (WorkspaceKind::Qgis, vec![]),
            (WorkspaceKind::Jupyter, vec![SETTINGS_FILE]),
        ] {
            let env = prepare(kind, &files, &dir).unwrap();
            let script = dir.join(XSTARTUP_FILE);
            assert_eq!(
                env,
                [(
                    XSTARTUP_ENV.to_owned(),
                    script.to_string_lossy().into_owned()
                )]
            );
            assert_eq!(std::fs::read_to_string(&script).unwrap(), XSTARTUP);
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&script), 0o700);
            assert_eq!(mode(&dir), 0o700);
        }
        assert!(XSTARTUP.starts_with("#!/bin/sh\n"));
        assert!(XSTARTUP.contains("qgis --noversioncheck &"));
        // The qgis image starts its desktop with the same script.
        assert_eq!(
            include_str!("../../../images/qgis/xstartup"),
            XSTARTUP,
            "images/qgis/xstartup"
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
