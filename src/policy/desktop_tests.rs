//! Tests of `policy::desktop`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Seed, desktop_sources, global_settings, ini_key, ini_value, seed};
use crate::api::v1alpha1::{DataSource, DataSourceSpec, WorkspaceKind, WorkspaceProfileSpec};
use crate::policy::workspace::validate::test_support::yaml;

fn source(name: &str, spec: &str) -> DataSource {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    yaml::<DataSource>(&format!(
        "apiVersion: atelier.dev/v1alpha1\nkind: DataSource\nmetadata:\n  name: {name}\nspec:\n{spec}"
    ))
}

fn named(name: &str, spec: &str) -> (String, DataSourceSpec) {
    (name.to_owned(), source(name, spec).spec)
}

fn profile(desktop: &[&str]) -> WorkspaceProfileSpec {
    let list: Vec<String> = desktop.iter().map(|s| format!("\"{s}\"")).collect();
    yaml(&format!(
        "displayName: Q\nimage: i\nkind: qgis\ndesktop:\n  dataSources: [{}]\n",
        list.join(", ")
    ))
}

fn groups(gs: &[&str]) -> BTreeSet<String> {
    gs.iter().map(|g| g.to_string()).collect()
}

const NFS: &str = "mountPath: /data/ocean\nnfs: {server: nfs.example.org, path: /export/ocean}";
const PVC: &str = "mountPath: /data/shared\npvc: {claimName: shared}";
const S3: &str =
    "s3: {endpoint: 'https://s3.example.org', bucket: argo}\ncredentialsSecret: {name: argo-keys}";
const S3_CSI: &str = "mountPath: /data/argo\ns3: {endpoint: 'https://s3.example.org', bucket: argo}\ncredentialsSecret: {name: argo-keys}\ncsi: {driver: s3.csi.example.org}";
const IRODS_CSI: &str = "mountPath: /data/irods\nirods: {host: irods.example.org, zone: z, path: /z/home}\ncsi: {driver: irods.csi.example.org}";
const IRODS: &str = "irods: {host: irods.example.org, zone: z, path: /z/home}";
const STAC: &str = "stac: 'https://stac.example.org/'";
const OGC: &str = "ogc:\n  wms: 'https://thredds.example.org/thredds/wms/sst.nc'\n  wmts: 'https://tiles.example.org/wmts/1.0.0/WMTSCapabilities.xml'\n  wcs: 'https://thredds.example.org/thredds/wcs/sst.nc'";
const NFS_OGC: &str = "mountPath: /data/sst\nnfs: {server: nfs.example.org, path: /export/sst}\nogc:\n  wms: 'https://thredds.example.org/thredds/wms/sst.nc?service=WMS'";

#[test]
fn desktop_sources_are_the_profiles_that_exist_and_admit_the_user() {
    let available = vec![
        source("open-ogc", OGC),
        source(
            "vo-only",
            "allowedGroups: [vo-ocean]\nogc: {wms: 'https://a.example.org/wms'}",
        ),
        source("b-nfs", NFS),
        source("not-listed", OGC),
    ];
    let p = profile(&["vo-only", "open-ogc", "missing", "b-nfs"]);
    let names = |kind, gs: &[&str], own: &[(String, DataSourceSpec)]| -> Vec<String> {
        desktop_sources(kind, &p, &available, &groups(gs), own)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    // Sorted; a missing name and a forbidden one left out; one not listed never shown.
    assert_eq!(names(WorkspaceKind::Qgis, &[], &[]), ["b-nfs", "open-ogc"]);
    assert_eq!(
        names(WorkspaceKind::Qgis, &["vo-ocean"], &[]),
        ["b-nfs", "open-ogc", "vo-only"]
    );
    // The workspace's own sources are not shown twice.
    assert_eq!(
        names(
            WorkspaceKind::Qgis,
            &["vo-ocean"],
            &[named("open-ogc", OGC)]
        ),
        ["b-nfs", "vo-only"]
    );
    // Only a desktop shows them.
    for kind in [
        WorkspaceKind::Jupyter,
        WorkspaceKind::R,
        WorkspaceKind::Rstudio,
    ] {
        assert!(names(kind, &["vo-ocean"], &[]).is_empty(), "{kind:?}");
    }
    // A profile without `desktop` shows nothing more.
    let plain: WorkspaceProfileSpec = yaml("displayName: Q\nimage: i\nkind: qgis\n");
    assert!(desktop_sources(WorkspaceKind::Qgis, &plain, &available, &groups(&[]), &[]).is_empty());
}

#[test]
fn what_each_source_becomes() {
    let wms = |n: &str, u: &str| (n.to_owned(), u.to_owned());
    let ogc_wms = [
        wms("s", "https://thredds.example.org/thredds/wms/sst.nc"),
        wms(
            "s (WMTS)",
            "https://tiles.example.org/wmts/1.0.0/WMTSCapabilities.xml",
        ),
    ];
    let ogc_wcs = [wms("s", "https://thredds.example.org/thredds/wcs/sst.nc")];
    // (case, spec, own?, favourites, wms, wcs)
    type Row<'a> = (
        &'a str,
        String,
        bool,
        Vec<(&'a str, &'a str)>,
        Vec<(String, String)>,
        Vec<(String, String)>,
    );
    let rows: Vec<Row> = vec![
        ("nfs", NFS.into(), true, vec![("/data/ocean", "s")], vec![], vec![]),
        ("pvc", PVC.into(), true, vec![("/data/shared", "s")], vec![], vec![]),
        ("s3 without csi: not in the browser", S3.into(), true, vec![], vec![], vec![]),
        ("s3 through csi", S3_CSI.into(), true, vec![("/data/argo", "s")], vec![], vec![]),
        ("irods through csi", IRODS_CSI.into(), true, vec![("/data/irods", "s")], vec![], vec![]),
        ("irods without csi", IRODS.into(), true, vec![], vec![], vec![]),
        ("stac only", STAC.into(), true, vec![], vec![], vec![]),
        ("ogc only", OGC.into(), true, vec![], ogc_wms.to_vec(), ogc_wcs.to_vec()),
        ("ogc only, desktop's", OGC.into(), false, vec![], ogc_wms.to_vec(), ogc_wcs.to_vec()),
        (
            "mounted with ogc",
            NFS_OGC.into(),
            true,
            vec![("/data/sst", "s")],
            vec![wms("s", "https://thredds.example.org/thredds/wms/sst.nc?service=WMS")],
            vec![],
        ),
        (
            "mounted with ogc, desktop's: not mounted here, only its services",
            NFS_OGC.into(),
            false,
            vec![],
            vec![wms("s", "https://thredds.example.org/thredds/wms/sst.nc?service=WMS")],
            vec![],
        ),
        ("nfs, desktop's", NFS.into(), false, vec![], vec![], vec![]),
        ("s3 through csi, desktop's", S3_CSI.into(), false, vec![], vec![], vec![]),
        (
            "a user in a URL: left out",
            "ogc: {wms: 'https://me:hunter2@a.example.org/wms', wcs: 'https://a.example.org/wcs?u=me@x'}".into(),
            true,
            vec![],
            vec![],
            vec![wms("s", "https://a.example.org/wcs?u=me@x")],
        ),
    ];
    for (case, spec, own, favourites, wms_want, wcs_want) in rows {
        let s = vec![named("s", &spec)];
        let got = if own { seed(&s, &[]) } else { seed(&[], &s) };
        let want = Seed {
            wms: wms_want.into_iter().collect(),
            wcs: wcs_want.into_iter().collect(),
            favourites: favourites
                .into_iter()
                .map(|(p, n)| (p.to_owned(), n.to_owned()))
                .collect(),
        };
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn the_file_of_a_workspace_with_every_kind_of_source() {
    let own = vec![
        named("argo", S3_CSI),
        named("ocean", NFS),
        named("sst", NFS_OGC),
    ];
    let extra = vec![
        named("c-thredds", OGC),
        named(
            "a-tiles",
            "ogc: {wmts: 'https://t.example.org/wmts?a=1,2;b'}",
        ),
    ];
    let text = global_settings(&own, &extra);
    assert_eq!(
        text,
        r#"; The QGIS desktop's defaults, written by Atelier (QGIS_GLOBAL_SETTINGS_FILE): the
; workspace's data and the centre's OGC services. Your own settings override them.
; No credentials are written here: they stay in the environment.

[qgis]
connections-wms\a-tiles%20%28WMTS%29\url="https://t.example.org/wmts?a=1,2;b"
connections-wms\c-thredds\url="https://thredds.example.org/thredds/wms/sst.nc"
connections-wms\c-thredds%20%28WMTS%29\url="https://tiles.example.org/wmts/1.0.0/WMTSCapabilities.xml"
connections-wms\sst\url="https://thredds.example.org/thredds/wms/sst.nc?service=WMS"
connections-wcs\c-thredds\url="https://thredds.example.org/thredds/wcs/sst.nc"

[connections]
ows\items\wms\connections\items\a-tiles%20%28WMTS%29\url="https://t.example.org/wmts?a=1,2;b"
ows\items\wms\connections\items\c-thredds\url="https://thredds.example.org/thredds/wms/sst.nc"
ows\items\wms\connections\items\c-thredds%20%28WMTS%29\url="https://tiles.example.org/wmts/1.0.0/WMTSCapabilities.xml"
ows\items\wms\connections\items\sst\url="https://thredds.example.org/thredds/wms/sst.nc?service=WMS"
ows\items\wcs\connections\items\c-thredds\url="https://thredds.example.org/thredds/wcs/sst.nc"

[browser]
favourites="/data/argo|||argo", "/data/ocean|||ocean", "/data/sst|||sst"
"#
    );
    // Nothing to show: the header only, no empty section.
    let empty = global_settings(&[named("argo", S3)], &[]);
    assert!(!empty.contains('['), "{empty}");
    assert!(empty.lines().all(|l| l.starts_with(';')), "{empty}");
}

#[test]
fn no_credentials_ever_reach_the_file() {
    let by_group = "s3: {endpoint: 'https://s3.example.org', bucket: b}\nmountPath: /data/b\ncsi: {driver: s3.csi.example.org, nodePublishSecret: {name: csi-node-keys}}\ncredentialsByGroup:\n- {group: vo-ocean, secret: {name: ocean-keys}}\nogc: {wms: 'https://user:pa55@a.example.org/wms'}";
    let own = vec![named("argo", S3_CSI), named("b", by_group)];
    let text = global_settings(
        &own,
        &[named("c", "ogc: {wcs: 'https://x:y@c.example.org/wcs'}")],
    );
    for secret in [
        "argo-keys",
        "ocean-keys",
        "csi-node-keys",
        "pa55",
        "user",
        "AWS_",
        "x:y",
    ] {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
    assert!(text.contains("/data/b|||b"), "{text}");
}

#[test]
fn keys_are_escaped_as_qt_writes_them() {
    for (segment, want) in [
        ("ocean-data.v2_x", "ocean-data.v2_x"),
        ("sst (WMTS)", "sst%20%28WMTS%29"),
        ("a/b", "a%2Fb"),
        ("a=b;c,d", "a%3Db%3Bc%2Cd"),
        ("x\\y", "x%5Cy"),
        ("%", "%25"),
        ("é", "%E9"),
        ("€", "%U20AC"),
        ("🌊", "%UD83C%UDF0A"),
    ] {
        assert_eq!(ini_key(segment), want, "{segment:?}");
    }
}

#[test]
fn values_are_quoted_and_escaped_as_qt_reads_them() {
    for (value, want) in [
        (
            "https://a.example.org/wms",
            r#""https://a.example.org/wms""#,
        ),
        // A list separator, a comment and an assignment stay text inside the quotes.
        (
            "https://a.example.org/w?x=1,2;y",
            r#""https://a.example.org/w?x=1,2;y""#,
        ),
        (" spaced ", r#"" spaced ""#),
        (r#"say "hi" \o/"#, r#""say \"hi\" \\o/""#),
        ("tab\there\nline", r#""tab\there\nline""#),
        ("@Variant(x)", r#""@@Variant(x)""#),
        ("mid@dle", r#""mid@dle""#),
        // Beyond ASCII: a hex escape per UTF-16 unit, and a hex digit after one escaped too.
        ("/data/été", r#""/data/\xe9t\xe9""#),
        ("/data/é1b", r#""/data/\xe9\x31\x62""#),
        ("/data/ég", r#""/data/\xe9g""#),
        ("🌊", r#""\xd83c\xdf0a""#),
        ("nul\0a", r#""nul\0\x61""#),
        ("\u{7f}", r#""\x7f""#),
    ] {
        assert_eq!(ini_value(value), want, "{value:?}");
    }
}

#[test]
fn favourites_keep_source_order_and_odd_paths_are_escaped() {
    let own = vec![
        named("z", "mountPath: '/data/z, with comma'\npvc: {claimName: z}"),
        named("a", "mountPath: /données\npvc: {claimName: a}"),
    ];
    let text = global_settings(&own, &[]);
    let line = text
        .lines()
        .find(|l| l.starts_with("favourites="))
        .expect("favourites");
    assert_eq!(
        line,
        r#"favourites="/donn\xe9\x65s|||a", "/data/z, with comma|||z""#
    );
    let map: BTreeMap<_, _> = seed(&own, &[]).favourites.into_iter().collect();
    assert_eq!(map.len(), 2);
}
