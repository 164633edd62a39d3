//! The QGIS desktop for real, in a browser: real `atelier hub` and `atelier proxy` processes on
//! free 127.0.0.1 ports (SQLite, dev login), a catalogue with a `kind: qgis` profile whose
//! `desktop.dataSources` names a THREDDS-like OGC source, the local backend running the real
//! `jupyterhub-singleuser` from `$ATELIER_PEERS_VENV` with jupyter-remote-desktop-proxy and
//! jupyter-server-proxy, and Debian's TigerVNC, Xfce and QGIS 3.22; headless Chromium through
//! npm `playwright-core` (`e2e/browser/desktop.mjs`):
//!
//! - the user logs in, starts the QGIS profile from the spawn form, opens
//!   `/user/<user>/desktop/` and waits until noVNC is connected over the proxied WebSocket
//!   (`/user/<user>/desktop-websockify/`, through `atelier proxy`);
//! - inside the workspace, on the display of the server's own TigerVNC (found in `/proc`: the
//!   `Xtigervnc` whose HOME is the user's directory), `wmctrl -l` lists QGIS's main window; the
//!   QGIS process runs as the server's user with HOME the server's home, and its
//!   `QGIS_GLOBAL_SETTINGS_FILE` is the hub's seed, holding the profile's OGC connections;
//! - the page saves the desktop (`desktop.png`, and `canvas.png`, the remote screen alone) in
//!   `<target>/test-output/desktop-qgis/` (`$CARGO_TARGET_DIR` or `./target`; the path is
//!   printed), after checking on the canvas's pixels (`getImageData`) that it is not blank:
//!   at least 16 colours and a luminance standard deviation of at least 10.
//!
//! Gated by `ATELIER_PEERS=1` (a missing peer is then a failure): `ATELIER_PEERS=1
//! ATELIER_PEERS_VENV=$PWD/.peers/venv cargo test --test desktop_qgis -- --nocapture`. Every
//! process (hub, proxy, server, VNC server, the X session, QGIS, node, Chromium) is killed when
//! the test ends, also on panic; on panic the logs are printed and the temporary directory kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use atelier::store::tokens::generate_token;

mod common;

use common::chromium::{self, Script, assert_passed, is_png, output_dir};
use common::hub::peers_venv;
use common::stack::{Deadline, Proc, ProcInfo, free_port, processes, singleusers};
use common::{launch, say, story};

const USER: &str = "gisela";
const PROFILE: &str = "qgis-desktop";

/// The hub's catalogue: a pool, the QGIS profile (the local backend runs
/// `jupyterhub-singleuser` whatever the image), the OGC source its desktop shows, and one the
/// user may not use (left out of the seed).
const CATALOG: &str = "\
apiVersion: atelier.dev/v1alpha1
kind: NodePool
metadata:
  name: interactive
spec:
  purpose: interactive
---
apiVersion: atelier.dev/v1alpha1
kind: WorkspaceProfile
metadata:
  name: qgis-desktop
spec:
  displayName: QGIS desktop
  description: QGIS in a desktop in the browser.
  kind: qgis
  image: registry.example.org/atelier/qgis:3.40
  desktop:
    dataSources: [thredds-ocean, staff-maps]
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata:
  name: thredds-ocean
spec:
  description: The centre's THREDDS.
  ogc:
    wms: https://thredds.example.org/thredds/wms/sst.nc
    wcs: https://thredds.example.org/thredds/wcs/sst.nc
---
apiVersion: atelier.dev/v1alpha1
kind: DataSource
metadata:
  name: staff-maps
spec:
  ogc:
    wmts: https://maps.example.org/wmts
  allowedGroups: [staff]
";

/// The bound on the whole browser script (the first start of the X session and QGIS included).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the test needs, or `None` (after saying SKIPPED) when peer tests are off. With
/// `ATELIER_PEERS=1` a missing peer is a failure.
fn peers() -> Option<(PathBuf, PathBuf)> {
    let venv = peers_venv(
        "the QGIS desktop in headless Chromium",
        &["jupyterhub-singleuser"],
    )?;
    let imports = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import jupyter_remote_desktop_proxy, jupyter_server_proxy",
        ])
        .status()
        .expect("the venv's python");
    assert!(
        imports.success(),
        "ATELIER_PEERS=1 but jupyter-remote-desktop-proxy or jupyter-server-proxy is missing \
         from {} (.ci/peers-requirements.txt)",
        venv.display()
    );
    for program in [
        "vncserver",
        "Xtigervnc",
        "xfce4-session",
        "dbus-launch",
        "qgis",
        "wmctrl",
    ] {
        assert!(
            which(program).is_some(),
            "ATELIER_PEERS=1 but {program} is not on PATH (apt-get install qgis \
             tigervnc-standalone-server xfce4 dbus-x11 wmctrl; .ci/test.sh does)"
        );
    }
    Some((venv, chromium::chromium()))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The test's processes under one temporary directory; dropping it kills them all, and prints
/// the logs when the test failed.
struct World {
    dir: PathBuf,
    procs: BTreeMap<String, Proc>,
    /// The X display of the server's VNC server (`:N`), once known: a VNC server killed with
    /// SIGKILL leaves its lock file and socket behind, which the drop removes.
    display: Option<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        let vnc_logs = story::logs_in(&self.dir.join(format!("state/users/{USER}/.vnc")));
        story::wind_up("desktop", &self.dir, &mut self.procs, vnc_logs, 80);
        if let Some(n) = self.display.as_deref().and_then(|d| d.strip_prefix(':')) {
            let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
            let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
        }
    }
}

/// The live processes under `dir` whose command line starts with `program`.
fn running(dir: &str, program: &str) -> Vec<ProcInfo> {
    processes()
        .into_iter()
        .filter(|p| {
            p.alive()
                && p.belongs_to(dir)
                && p.cmdline
                    .split(' ')
                    .next()
                    .is_some_and(|argv0| argv0.rsplit('/').next() == Some(program))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qgis_desktop_in_chromium() {
    let Some((venv, chromium)) = peers() else {
        return;
    };
    let out = output_dir("desktop-qgis");
    let dir = std::env::temp_dir().join(format!("atelier-desktop-{}", &generate_token()[..16]));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir_str = dir.to_string_lossy().into_owned();
    let mut world = World {
        dir: dir.clone(),
        procs: BTreeMap::new(),
        display: None,
    };
    let (hub_port, proxy_port) = (free_port(), free_port());
    let public = format!("http://127.0.0.1:{proxy_port}");
    let hub_url = format!("http://127.0.0.1:{hub_port}");
    let catalog = dir.join("catalog.yaml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let db_url = format!("sqlite://{}", dir.join("atelier.sqlite").display());
    let state = dir.join("state");

    let singleuser = venv.join("bin/jupyterhub-singleuser");
    let mut hub = launch::hub_command(
        "info",
        &launch::HubArgs {
            port: hub_port,
            database_url: &db_url,
            public_url: &public,
            state_dir: &state,
            server_command: &singleuser,
        },
    );
    hub.env("LANG", "C.UTF-8")
        .arg("--spawn-timeout=120")
        .arg("--dev-login")
        .arg(format!("--catalog={}", catalog.display()));
    let url = format!("{hub_url}/hub/api/");
    launch::start_group(&mut world.procs, &dir, "hub", hub, &url).await;
    let proxy = launch::start_proxy(&dir, proxy_port, &db_url, &hub_url).await;
    world.procs.insert("proxy".into(), proxy);

    let seen = dir.join("qgis-seen");
    let mut node = Command::new("node");
    node.arg("desktop.mjs")
        .env("ATELIER_URL", &public)
        .env("USER_NAME", USER)
        .env("PROFILE", PROFILE)
        .env("SCREENSHOT_DIR", &out)
        .env("QGIS_SEEN", &seen)
        .env("CHROMIUM", &chromium);
    let mut script = Script::spawn("browser", node, &dir, &mut world.procs);
    let script_deadline = Deadline::new("the browser script to finish", SCRIPT_TIMEOUT);

    // 1. The browser is connected: the server's own VNC server runs the desktop.
    loop {
        if script.lines().iter().any(|l| l == "connected") {
            break;
        }
        if let Some(status) = script.exited(&mut world.procs) {
            script.join();
            panic!("the browser script ended ({status}) before the desktop connected");
        }
        script_deadline.tick("waiting for the desktop").await;
    }
    let servers = singleusers(&dir_str, USER);
    assert_eq!(servers.len(), 1, "the user's server: {servers:?}");
    let home = state.join("users").join(USER);
    let home_str = home.to_string_lossy().into_owned();
    assert_eq!(servers[0].env("HOME"), Some(home_str.as_str()));
    let vnc = running(&dir_str, "Xtigervnc");
    assert_eq!(vnc.len(), 1, "one VNC server: {vnc:?}");
    assert_eq!(vnc[0].env("HOME"), Some(home_str.as_str()));
    assert!(
        vnc[0].cmdline.contains("-rfbunixpath") && vnc[0].cmdline.contains("-rfbport -1"),
        "VNC on a Unix socket only: {}",
        vnc[0].cmdline
    );
    let display = vnc[0]
        .cmdline
        .split(' ')
        .find(|a| a.starts_with(':') && a[1..].chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no display in {}", vnc[0].cmdline))
        .to_owned();
    world.display = Some(display.clone());

    // 2. QGIS's main window on that display, as `wmctrl -l` lists it and `xwininfo -root -tree`
    // shows it in the window tree. Both are asked until both agree: QGIS maps its main window
    // once, but a loaded machine may catch the tree while the window manager reparents it.
    let window_deadline = Deadline::new(
        format!("a QGIS main window on display {display}"),
        Duration::from_secs(240),
    );
    let x11 = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .env("DISPLAY", &display)
            .env("XAUTHORITY", home.join(".Xauthority"))
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (windows, tree) = loop {
        let windows = x11("wmctrl", &["-l"]);
        let listed = windows
            .lines()
            .any(|l| l.ends_with("— QGIS") || l.ends_with("- QGIS"));
        let tree = if listed {
            x11("xwininfo", &["-root", "-tree"])
        } else {
            String::new()
        };
        if tree
            .lines()
            .any(|l| l.contains("— QGIS\"") || l.contains("- QGIS\""))
        {
            break (windows, tree);
        }
        assert!(
            script.exited(&mut world.procs).is_none(),
            "the browser script ended while waiting for QGIS"
        );
        window_deadline
            .tick(format!(
                "wmctrl -l:\n{windows}\nxwininfo -root -tree:\n{tree}"
            ))
            .await;
    };
    say(format!("desktop: wmctrl -l on {display}:\n{windows}"));
    assert!(
        tree.lines().any(|l| l.contains("QGIS")),
        "xwininfo -root -tree lists no QGIS window:\n{tree}"
    );

    // 3. QGIS runs as the server's user, HOME the server's home, with the hub's seed.
    let qgis = running(&dir_str, "qgis.bin");
    assert_eq!(qgis.len(), 1, "one QGIS: {qgis:?}");
    assert_eq!(qgis[0].env("HOME"), Some(home_str.as_str()));
    let seed_path = qgis[0]
        .env("QGIS_GLOBAL_SETTINGS_FILE")
        .expect("QGIS_GLOBAL_SETTINGS_FILE in QGIS's environment")
        .to_owned();
    let seed = std::fs::read_to_string(&seed_path).expect("the seed file");
    assert!(
        seed.contains(
            "connections-wms\\thredds-ocean\\url=\"https://thredds.example.org/thredds/wms/sst.nc\""
        ) && seed.contains(
            "connections-wcs\\thredds-ocean\\url=\"https://thredds.example.org/thredds/wcs/sst.nc\""
        ),
        "the profile's OGC source in the seed:\n{seed}"
    );
    assert!(
        !seed.contains("staff-maps"),
        "a source the user may not use is left out:\n{seed}"
    );
    // SAFETY: getuid(2) has no preconditions.
    let uid = unsafe { libc::getuid() };
    let status = std::fs::read_to_string(format!("/proc/{}/status", qgis[0].pid)).unwrap();
    let qgis_uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok());
    assert_eq!(qgis_uid, Some(uid), "QGIS runs as the server's user");
    std::fs::write(&seen, "seen\n").unwrap();

    // 4. The browser saves the desktop once its canvas shows it.
    let (status, lines) = script.finish(&mut world.procs, &script_deadline).await;
    assert_passed("the browser script", status, &lines);
    let stats: serde_json::Value = lines
        .iter()
        .find_map(|l| l.strip_prefix("canvas "))
        .map(|j| serde_json::from_str(j).expect("the canvas statistics"))
        .expect("a canvas line");
    assert!(stats["colours"].as_u64().unwrap_or(0) >= 16, "{stats}");
    assert!(stats["stddev"].as_f64().unwrap_or(0.0) >= 10.0, "{stats}");
    for name in ["desktop.png", "canvas.png"] {
        let path = out.join(name);
        assert!(
            is_png(&path, 10_000),
            "{} is not a PNG screenshot",
            path.display()
        );
    }
    say(format!(
        "desktop: screenshots in {} (canvas {stats})",
        out.display()
    ));
}

/// What QGIS 3.22 itself reads of a seed (`QgsSettings` with the file as its global settings,
/// `QgsOwsConnection::connectionList`), as JSON.
const READ_SEED: &str = r#"
import json, sys
from qgis.core import QgsApplication, QgsOwsConnection, QgsSettings
QgsSettings.setGlobalSettingsPath(sys.argv[1])
app = QgsApplication([], False)
app.initQgis()
s = QgsSettings()
out = {"favourites": s.value("browser/favourites", []) or []}
for service in ["WMS", "WCS"]:
    out[service.lower()] = {
        name: s.value(f"qgis/connections-{service.lower()}/{name}/url")
        for name in QgsOwsConnection.connectionList(service)
    }
if isinstance(out["favourites"], str):
    out["favourites"] = [out["favourites"]]
print("SEED " + json.dumps(out))
"#;

/// The seed's escaping, as Qt reads it back: QGIS 3.22's own Python bindings load a seed with
/// names, URLs and paths full of INI specials and non-ASCII, and list exactly the connections
/// and favourites `policy::desktop` meant.
#[test]
fn qgis_reads_the_seed_as_written() {
    if std::env::var("ATELIER_PEERS").ok().as_deref() != Some("1") {
        say("SKIPPED: QGIS 3.22 reads the desktop seed (set ATELIER_PEERS=1)");
        return;
    }
    use atelier::api::v1alpha1::DataSourceSpec;
    use atelier::policy::desktop;
    let spec = |json: serde_json::Value| -> DataSourceSpec {
        serde_json::from_value(json).expect("a DataSourceSpec")
    };
    let own = vec![
        (
            "a.b-c".to_owned(),
            spec(serde_json::json!({
                "pvc": {"claimName": "x"},
                "mountPath": "/données/été 2024, v1;=\"q\"",
                "ogc": {
                    "wms": "https://a.example.org/wms?layers=a,b;c=\"d\"&x=\\y",
                    "wmts": "https://a.example.org/wmts/1.0.0/WMTSCapabilities.xml"
                }
            })),
        ),
        (
            "zz".to_owned(),
            spec(serde_json::json!({
                "nfs": {"server": "n", "path": "/p"},
                "mountPath": "/scratch",
                "ogc": {"wcs": "https://c.example.org/wcs?cov=sst%20a,b"}
            })),
        ),
    ];
    let extra = vec![(
        "thredds".to_owned(),
        spec(serde_json::json!({"ogc": {"wms": "http://127.0.0.1:8080/thredds/wms/é.nc"}})),
    )];
    let dir = std::env::temp_dir().join(format!("atelier-seed-{}", &generate_token()[..16]));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(desktop::SETTINGS_FILE);
    std::fs::write(&path, desktop::global_settings(&own, &extra)).unwrap();
    let output = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(READ_SEED)
        .arg(&path)
        .env("QT_QPA_PLATFORM", "offscreen")
        .env("HOME", &dir)
        .env("XDG_RUNTIME_DIR", &dir)
        .output()
        .expect("/usr/bin/python3 with QGIS's bindings (python3-qgis)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SEED "))
        .unwrap_or_else(|| {
            panic!(
                "QGIS read nothing ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let got: serde_json::Value = serde_json::from_str(line).unwrap();
    let seed = desktop::seed(&own, &extra);
    let want = serde_json::json!({
        "wms": seed.wms,
        "wcs": seed.wcs,
        "favourites": seed
            .favourites
            .iter()
            .map(|(path, name)| format!("{path}|||{name}"))
            .collect::<Vec<_>>(),
    });
    assert_eq!(got, want, "as QGIS reads {}", path.display());
    assert_eq!(got["wms"].as_object().unwrap().len(), 3, "{got}");
    std::fs::remove_dir_all(&dir).unwrap();
}
