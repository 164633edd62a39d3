//! The QGIS desktop's seed: what a `qgis` workspace's QGIS shows ready-made in its browser
//! panel, as a QGIS *global settings* file. Pure: both backends write the text this module
//! makes (the local backend into the server's data directory, the operator into the
//! catalogue's ConfigMap) and point [`SETTINGS_ENV`] at it.
//!
//! # The file
//!
//! QGIS reads `QGIS_GLOBAL_SETTINGS_FILE` (or `--globalsettingsfile`) at start as the defaults
//! under the user's own profile (`QGIS3.ini`): what the user changes is theirs, and a value the
//! user never set comes from here. It is a Qt `QSettings` INI file. The keys QGIS 3.22 reads
//! (seen with Debian's QGIS 3.22.16 through `QgsOwsConnection::connectionList` and
//! `QgsBrowserModel`, whose global-settings children are listed beside the user's):
//!
//! - `qgis/connections-wms/<name>/url`: a WMS/WMTS connection. QGIS 3.22 has no WMTS group of
//!   its own: a WMTS is a connection of the same group whose URL is its capabilities document,
//!   named `<source> (WMTS)` here;
//! - `qgis/connections-wcs/<name>/url`: a WCS connection;
//! - `browser/favourites`: a list of `<path>|||<name>` favourites (directories), for the mounted
//!   paths.
//!
//! QGIS 3.30 moved the connections to `connections/ows/items/<service>/connections/items/<name>/`
//! (`QgsOwsConnection::sTreeOwsConnections`); the file holds both, so that the images' newer
//! QGIS (3.40 LTR from conda-forge, `images/qgis`) shows them too.
//!
//! # What becomes what
//!
//! For the workspace's own data sources ([`ValidatedWorkspace::data_sources`]): a mounted source
//! (nfs, pvc, or s3/irods through csi) is a favourite at its `mountPath`, and its `ogc` services
//! are connections. For the profile's `desktop.dataSources` the user may use
//! ([`desktop_sources`]: a name that does not exist, or whose `allowedGroups` the user is not
//! in, is left out, not refused), only the `ogc` services: their data is neither mounted nor
//! given credentials in this workspace.
//!
//! An s3 source without csi is not in the browser: QGIS 3.22's browser lists directories
//! through the file system only. Seen against SeaweedFS with the workspace's GDAL variables: GDAL
//! lists `/vsis3/<bucket>/<prefix>` and QGIS opens a layer from `/vsis3/<bucket>/<key>`, but a
//! `QgsDirectoryItem` (what a favourite is) at that path has no children. So its objects open
//! through GDAL with the workspace's environment (`AWS_S3_ENDPOINT`, the keys; `policy::data`):
//! in *Layer › Add Layer*, protocol *AWS S3*, or as a `/vsis3/<bucket>/<key>` path. A STAC-only
//! source has no QGIS 3.22 connection either.
//!
//! # No credentials
//!
//! The file holds URLs and paths only. Credentials stay in the environment; an OGC URL with a
//! user or password in it (`https://user:secret@host/…`) is left out whole rather than
//! written.
//!
//! [`ValidatedWorkspace::data_sources`]: crate::policy::workspace::ValidatedWorkspace

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::api::v1alpha1::{DataSource, DataSourceSpec, WorkspaceKind, WorkspaceProfileSpec};
use crate::policy::allowed;

/// The variable QGIS reads its global settings file from.
pub const SETTINGS_ENV: &str = "QGIS_GLOBAL_SETTINGS_FILE";
/// The name of the seed file (the local backend's data file, the key in the operator's
/// catalogue ConfigMap).
pub const SETTINGS_FILE: &str = "qgis_global_settings.ini";
/// Where a Kubernetes workspace's pod finds the seed (the operator mounts it there from the
/// catalogue's ConfigMap): no data source may be mounted at this path.
pub const POD_DESKTOP_DIR: &str = "/etc/atelier/desktop";
/// What a WMTS connection's name ends with (it shares the WMS group).
pub const WMTS_SUFFIX: &str = " (WMTS)";

/// The profile's `desktop.dataSources` that a workspace of `kind` shows besides its own
/// sources (`own`, by name): none unless `kind` is `qgis`; else each name that exists in
/// `available` and whose `allowedGroups` admit `groups`, sorted by name, without those already
/// in `own`. A name that does not exist or is forbidden is left out, not refused.
pub fn desktop_sources(
    kind: WorkspaceKind,
    profile: &WorkspaceProfileSpec,
    available: &[DataSource],
    groups: &BTreeSet<String>,
    own: &[(String, DataSourceSpec)],
) -> Vec<(String, DataSourceSpec)> {
    if kind != WorkspaceKind::Qgis {
        return Vec::new();
    }
    let Some(desktop) = &profile.desktop else {
        return Vec::new();
    };
    let wanted: BTreeSet<&str> = desktop.data_sources.iter().map(String::as_str).collect();
    let mut out: BTreeMap<String, DataSourceSpec> = BTreeMap::new();
    for source in available {
        let name = source.name_any();
        if wanted.contains(name.as_str())
            && !own.iter().any(|(n, _)| *n == name)
            && allowed(&source.spec.allowed_groups, groups)
        {
            out.insert(name, source.spec.clone());
        }
    }
    out.into_iter().collect()
}

/// What the seed holds, before it is written as INI text ([`Seed::to_ini`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    /// WMS and WMTS connections: name → URL.
    pub wms: BTreeMap<String, String>,
    /// WCS connections: name → URL.
    pub wcs: BTreeMap<String, String>,
    /// Browser favourites: (path, name), in source-name order.
    pub favourites: Vec<(String, String)>,
}

/// The seed of a desktop with `own` data sources (the workspace's, mounted and given their
/// environment) and `extra` ones (the profile's [`desktop_sources`]: OGC services only).
pub fn seed(own: &[(String, DataSourceSpec)], extra: &[(String, DataSourceSpec)]) -> Seed {
    let mut out = Seed::default();
    let mut all: Vec<(&String, &DataSourceSpec, bool)> = own
        .iter()
        .map(|(n, s)| (n, s, true))
        .chain(extra.iter().map(|(n, s)| (n, s, false)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (name, spec, is_own) in all {
        if is_own
            && (spec.nfs.is_some() || spec.pvc.is_some() || spec.csi.is_some())
            && let Some(path) = spec.mount_path.as_deref().filter(|p| p.starts_with('/'))
        {
            out.favourites.push((path.to_owned(), name.clone()));
        }
        let Some(ogc) = &spec.ogc else {
            continue;
        };
        let usable = |url: &Option<String>| url.clone().filter(|u| !has_userinfo(u));
        if let Some(url) = usable(&ogc.wms) {
            out.wms.insert(name.clone(), url);
        }
        if let Some(url) = usable(&ogc.wmts) {
            out.wms.insert(format!("{name}{WMTS_SUFFIX}"), url);
        }
        if let Some(url) = usable(&ogc.wcs) {
            out.wcs.insert(name.clone(), url);
        }
    }
    out
}

/// Whether an `http(s)://` URL carries a user (and maybe a password) before its host.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

impl Seed {
    /// The QGIS global settings file: always the header; then a `[qgis]` section with the
    /// connections and a `[browser]` section with the favourites, each only when not empty.
    pub fn to_ini(&self) -> String {
        let mut text = String::from(
            "; The QGIS desktop's defaults, written by Atelier (QGIS_GLOBAL_SETTINGS_FILE): the\n\
             ; workspace's data and the centre's OGC services. Your own settings override them.\n\
             ; No credentials are written here: they stay in the environment.\n",
        );
        if !self.wms.is_empty() || !self.wcs.is_empty() {
            // QGIS 3.22's keys, then the same connections under QGIS 3.30+'s settings tree.
            let services = [("wms", &self.wms), ("wcs", &self.wcs)];
            text.push_str("\n[qgis]\n");
            for (service, connections) in services {
                for (name, url) in connections {
                    text.push_str(&format!(
                        "connections-{service}\\{}\\url={}\n",
                        ini_key(name),
                        ini_value(url)
                    ));
                }
            }
            text.push_str("\n[connections]\n");
            for (service, connections) in services {
                for (name, url) in connections {
                    text.push_str(&format!(
                        "ows\\items\\{service}\\connections\\items\\{}\\url={}\n",
                        ini_key(name),
                        ini_value(url)
                    ));
                }
            }
        }
        if !self.favourites.is_empty() {
            let list: Vec<String> = self
                .favourites
                .iter()
                .map(|(path, name)| ini_value(&format!("{path}|||{name}")))
                .collect();
            text.push_str(&format!("\n[browser]\nfavourites={}\n", list.join(", ")));
        }
        text
    }
}

/// The seed file of a workspace: [`seed`] written as INI ([`Seed::to_ini`]).
pub fn global_settings(
    own: &[(String, DataSourceSpec)],
    extra: &[(String, DataSourceSpec)],
) -> String {
    seed(own, extra).to_ini()
}

/// A key segment as Qt's `QSettings` writes it in INI files (`iniEscapedKey`): letters,
/// digits, `-`, `_` and `.` as they are, `/` as `\` (a group separator: never inside a
/// segment here, so escaped as `%2F`), any other character up to U+00FF as `%XX`, and beyond
/// as `%UXXXX` per UTF-16 unit.
pub fn ini_key(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for unit in segment.encode_utf16() {
        match char::from_u32(u32::from(unit)) {
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => out.push(c),
            _ if unit <= 0xFF => out.push_str(&format!("%{unit:02X}")),
            _ => out.push_str(&format!("%U{unit:04X}")),
        }
    }
    out
}

/// A string value as Qt's `QSettings` reads it back unchanged from an INI file
/// (`iniEscapedString`), always double-quoted (so that `,`, `;`, `=` and leading or trailing
/// spaces are plain text, never a list): `"` and `\` escaped with `\`, the C escapes for
/// control characters, any other character outside printable ASCII as `\xHHHH` per UTF-16
/// unit, and a hex digit right after such an escape escaped as well (Qt reads hex escapes
/// greedily). A leading `@` is doubled (Qt reads `@Type(…)` as a typed value).
pub fn ini_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    if value.starts_with('@') {
        out.push('@');
    }
    let mut after_hex = false;
    for unit in value.encode_utf16() {
        let c = char::from_u32(u32::from(unit));
        if after_hex && c.is_some_and(|c| c.is_ascii_hexdigit()) {
            out.push_str(&format!("\\x{unit:x}"));
            continue;
        }
        after_hex = false;
        match c {
            Some('\0') => {
                out.push_str("\\0");
                after_hex = true;
            }
            Some('\u{7}') => out.push_str("\\a"),
            Some('\u{8}') => out.push_str("\\b"),
            Some('\u{c}') => out.push_str("\\f"),
            Some('\n') => out.push_str("\\n"),
            Some('\r') => out.push_str("\\r"),
            Some('\t') => out.push_str("\\t"),
            Some('\u{b}') => out.push_str("\\v"),
            Some(c @ ('"' | '\\')) => {
                out.push('\\');
                out.push(c);
            }
            Some(c) if (' '..='~').contains(&c) => out.push(c),
            _ => {
                out.push_str(&format!("\\x{unit:x}"));
                after_hex = true;
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
#[path = "desktop_tests.rs"]
mod tests;
