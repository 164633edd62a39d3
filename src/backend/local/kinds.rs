//! What each kind of workspace needs on this machine, whether it is here, and what a server of
//! each kind gets from the local backend.
//!
//! Every kind runs `jupyterhub-singleuser`; the kind decides the application it opens on
//! (`JUPYTERHUB_DEFAULT_URL`, [`WorkspaceKind::default_url`]) and what must be installed beside
//! it ([`requirements`]):
//!
//! | kind | needs | provided by |
//! |---|---|---|
//! | `jupyter` | nothing more | |
//! | `r` | `R`, the R package `IRkernel` | Debian `r-base-core`, `r-cran-irkernel` |
//! | `rstudio` | `rserver`; `jupyter-rsession-proxy` in the server's Python | RStudio Server (not packaged by Debian), pip |
//! | `qgis` | `Xvnc`, `websockify`, `qgis`; `jupyter-remote-desktop-proxy` and `jupyter-server-proxy` in the server's Python | Debian `tigervnc-standalone-server`, `websockify`, `qgis`; pip |
//!
//! Programs are looked up on the `PATH` the servers get (the backend's `env` `PATH`, else the
//! hub's own when `env_keep` passes it on, else the system's default `/bin:/usr/bin`); Python
//! packages in the site directories of the server program's Python (its venv: the prefix above
//! `bin/`, plus the system's when the venv includes them, plus `PYTHONPATH`); R packages in
//! R's libraries (`R_LIBS*`, the site and system libraries, and those beside the `R` found).
//!
//! An `r` server gets the `ir` kernel from a kernelspec the backend writes under its state
//! directory (`<state_dir>/kinds/r/share/jupyter/kernels/ir`, running the `R` found on the
//! server's `PATH`), on `JUPYTER_PATH`, and a Jupyter Server configuration there
//! (`<state_dir>/kinds/r/etc/jupyter`, on `JUPYTER_CONFIG_PATH`) that makes `ir` the default
//! kernel. Nothing is written into system directories.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::v1alpha1::WorkspaceKind;
use crate::backend::MissingProgram;

/// How long a lookup of every kind's requirements is reused ([`KindsCache`]): the spawn page
/// asks on every view.
pub const LOOKUP_TTL: Duration = Duration::from_secs(10);

/// The `PATH` of a process started without one (glibc's `confstr(_CS_PATH)`).
pub const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// How a requirement is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// An executable file of this name on the server's `PATH`.
    Program,
    /// An importable Python package (this module name) in the server's Python.
    PythonPackage,
    /// An installed R package of this name.
    RPackage,
}

/// One thing a kind needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The program, Python module or R package looked for.
    pub name: &'static str,
    /// How it is looked for.
    pub lookup: Lookup,
    /// What an admin installs to get it.
    pub provided_by: &'static str,
}

const R_NEEDS: &[Requirement] = &[
    Requirement {
        name: "R",
        lookup: Lookup::Program,
        provided_by: "Debian package r-base-core (atelier up --install r)",
    },
    Requirement {
        name: "IRkernel",
        lookup: Lookup::RPackage,
        provided_by: "Debian package r-cran-irkernel (atelier up --install r)",
    },
];

const RSTUDIO_NEEDS: &[Requirement] = &[
    Requirement {
        name: "rserver",
        lookup: Lookup::Program,
        provided_by: "RStudio Server (not packaged by Debian nor any registry reachable here: \
                      run rstudio profiles on Kubernetes with images/rstudio)",
    },
    Requirement {
        name: "jupyter_rsession_proxy",
        lookup: Lookup::PythonPackage,
        provided_by: "pip package jupyter-rsession-proxy in the server's Python",
    },
];

const QGIS_NEEDS: &[Requirement] = &[
    Requirement {
        name: "Xvnc",
        lookup: Lookup::Program,
        provided_by: "Debian package tigervnc-standalone-server (atelier up --install qgis)",
    },
    Requirement {
        name: "websockify",
        lookup: Lookup::Program,
        provided_by: "Debian package websockify (atelier up --install qgis)",
    },
    Requirement {
        name: "qgis",
        lookup: Lookup::Program,
        provided_by: "Debian package qgis (atelier up --install qgis)",
    },
    Requirement {
        name: "jupyter_remote_desktop_proxy",
        lookup: Lookup::PythonPackage,
        provided_by: "pip package jupyter-remote-desktop-proxy in the server's Python \
                      (atelier up --install qgis)",
    },
    Requirement {
        name: "jupyter_server_proxy",
        lookup: Lookup::PythonPackage,
        provided_by: "pip package jupyter-server-proxy in the server's Python \
                      (atelier up --install qgis)",
    },
];

/// What a server of `kind` needs beside `jupyterhub-singleuser`.
pub fn requirements(kind: WorkspaceKind) -> &'static [Requirement] {
    match kind {
        WorkspaceKind::Jupyter => &[],
        WorkspaceKind::R => R_NEEDS,
        WorkspaceKind::Rstudio => RSTUDIO_NEEDS,
        WorkspaceKind::Qgis => QGIS_NEEDS,
    }
}

/// Where the requirements are looked for: what a server would see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// The directories of the server's `PATH`, in order.
    pub path: Vec<PathBuf>,
    /// The site directories of the server's Python.
    pub python_sites: Vec<PathBuf>,
    /// The R libraries.
    pub r_libs: Vec<PathBuf>,
}

impl Environment {
    /// The environment of a server run as `program` with environment variables `var` (the
    /// server's `PATH`, `PYTHONPATH`, `R_LIBS`, `R_LIBS_SITE`, `R_LIBS_USER`).
    pub fn of(program: &str, var: impl Fn(&str) -> Option<String>) -> Environment {
        let path_var = var("PATH").unwrap_or_else(|| DEFAULT_PATH.to_owned());
        let path: Vec<PathBuf> = std::env::split_paths(&OsString::from(path_var)).collect();
        let program = if program.contains('/') {
            Some(PathBuf::from(program))
        } else {
            find_in(&path, program)
        };
        let mut python_sites = Vec::new();
        if let Some(python_path) = var("PYTHONPATH") {
            python_sites.extend(std::env::split_paths(&OsString::from(python_path)));
        }
        if let Some(prefix) = program
            .as_deref()
            .and_then(Path::parent)
            .and_then(Path::parent)
        {
            python_sites.extend(site_dirs(prefix));
            let venv_config = std::fs::read_to_string(prefix.join("pyvenv.cfg")).ok();
            let system_sites = match &venv_config {
                Some(text) => text.lines().any(|l| {
                    let l = l.replace(' ', "");
                    l.eq_ignore_ascii_case("include-system-site-packages=true")
                }),
                None => true,
            };
            if system_sites && venv_config.is_some() {
                // The base interpreter's sites (`home` is its bin directory).
                if let Some(home) = venv_config.as_deref().and_then(|t| {
                    t.lines().find_map(|l| {
                        let (k, v) = l.split_once('=')?;
                        (k.trim() == "home").then(|| PathBuf::from(v.trim()))
                    })
                }) && let Some(base) = home.parent()
                {
                    python_sites.extend(site_dirs(base));
                }
            }
            if system_sites {
                python_sites.push(PathBuf::from("/usr/lib/python3/dist-packages"));
                python_sites.extend(site_dirs(Path::new("/usr/local")));
            }
        }
        let mut r_libs = Vec::new();
        for v in ["R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"] {
            if let Some(value) = var(v) {
                r_libs.extend(std::env::split_paths(&OsString::from(value)));
            }
        }
        if let Some(r) = find_in(&path, "R")
            && let Some(prefix) = r.parent().and_then(Path::parent)
        {
            r_libs.push(prefix.join("lib/R/site-library"));
            r_libs.push(prefix.join("lib/R/library"));
        }
        r_libs.extend(
            [
                "/usr/local/lib/R/site-library",
                "/usr/lib/R/site-library",
                "/usr/lib/R/library",
            ]
            .map(PathBuf::from),
        );
        Environment {
            path,
            python_sites,
            r_libs,
        }
    }

    /// Whether `requirement` is here.
    pub fn has(&self, requirement: &Requirement) -> bool {
        match requirement.lookup {
            Lookup::Program => find_in(&self.path, requirement.name).is_some(),
            Lookup::PythonPackage => self.python_sites.iter().any(|site| {
                site.join(requirement.name).is_dir()
                    || site.join(format!("{}.py", requirement.name)).is_file()
            }),
            Lookup::RPackage => self
                .r_libs
                .iter()
                .any(|lib| lib.join(requirement.name).join("DESCRIPTION").is_file()),
        }
    }

    /// What a server of `kind` lacks here, in the table's order.
    pub fn missing(&self, kind: WorkspaceKind) -> Vec<MissingProgram> {
        requirements(kind)
            .iter()
            .filter(|r| !self.has(r))
            .map(|r| MissingProgram {
                program: match r.lookup {
                    Lookup::Program => r.name.to_owned(),
                    Lookup::PythonPackage => format!("{} (Python package)", r.name),
                    Lookup::RPackage => format!("{} (R package)", r.name),
                },
                provided_by: r.provided_by.to_owned(),
            })
            .collect()
    }

    /// The `R` a server would run.
    pub fn r_program(&self) -> Option<PathBuf> {
        find_in(&self.path, "R")
    }
}

/// The executable file `name` in the first of `dirs` that has one.
pub fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `<prefix>/lib/python3*/{site,dist}-packages`, sorted.
fn site_dirs(prefix: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .flat_map(|e| {
            let p = e.path();
            [p.join("site-packages"), p.join("dist-packages")]
        })
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// What every kind lacks, in [`WorkspaceKind::ALL`]'s order.
type Lookups = Vec<(WorkspaceKind, Vec<MissingProgram>)>;

/// Every kind's missing requirements, looked up at most once per [`LOOKUP_TTL`].
#[derive(Default)]
pub struct KindsCache {
    last: Mutex<Option<(Instant, Lookups)>>,
}

impl KindsCache {
    /// What `kind` lacks in the environment `environment()` gives (called only when the cached
    /// answer is older than [`LOOKUP_TTL`]).
    pub fn missing(
        &self,
        kind: WorkspaceKind,
        environment: impl FnOnce() -> Environment,
    ) -> Vec<MissingProgram> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = last
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < LOOKUP_TTL);
        if !fresh {
            let env = environment();
            let all = WorkspaceKind::ALL
                .into_iter()
                .map(|k| (k, env.missing(k)))
                .collect();
            *last = Some((Instant::now(), all));
        }
        last.as_ref()
            .and_then(|(_, all)| all.iter().find(|(k, _)| *k == kind))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// One line naming what a start of `kind` lacks: `a qgis workspace cannot run on this machine:
/// missing Xvnc (provided by Debian package tigervnc-standalone-server ...), qgis (...)`.
pub fn describe_missing(kind: WorkspaceKind, missing: &[MissingProgram]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|m| format!("{} (provided by {})", m.program, m.provided_by))
        .collect();
    format!(
        "a {} workspace cannot run on this machine: missing {}",
        kind.as_str(),
        list.join(", ")
    )
}

/// The directory of what the backend writes for `kind` under the state directory.
pub fn kind_dir(state_dir: &Path, kind: WorkspaceKind) -> PathBuf {
    state_dir.join("kinds").join(kind.as_str())
}

/// The `ir` kernelspec for `r` (argv as IRkernel's own `installspec()` writes it).
pub fn ir_kernelspec(r: &Path) -> serde_json::Value {
    serde_json::json!({
        "argv": [r.to_string_lossy(), "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
        "display_name": "R",
        "language": "R",
    })
}

/// Writes what a server of `kind` needs under `state_dir` (for `r`: the `ir` kernelspec running
/// `r`, and the configuration making it the default kernel) and returns the environment that
/// points Jupyter at it, each path prepended to the server's own `existing` value.
pub fn prepare(
    state_dir: &Path,
    kind: WorkspaceKind,
    env: &Environment,
    existing: impl Fn(&str) -> Option<String>,
) -> std::io::Result<Vec<(String, String)>> {
    let mut out = vec![(
        "JUPYTERHUB_DEFAULT_URL".to_owned(),
        kind.default_url().to_owned(),
    )];
    if kind != WorkspaceKind::R {
        return Ok(out);
    }
    let r = env
        .r_program()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "R is not on the PATH"))?;
    let dir = kind_dir(state_dir, kind);
    let data = dir.join("share/jupyter");
    let config = dir.join("etc/jupyter");
    let kernel = data.join("kernels/ir");
    std::fs::create_dir_all(&kernel)?;
    std::fs::create_dir_all(&config)?;
    write_if_changed(
        &kernel.join("kernel.json"),
        &serde_json::to_string_pretty(&ir_kernelspec(&r)).expect("JSON"),
    )?;
    write_if_changed(
        &config.join("jupyter_server_config.json"),
        "{\n  \"MultiKernelManager\": {\"default_kernel_name\": \"ir\"}\n}\n",
    )?;
    let prepend = |var: &str, dir: &Path| {
        let mut paths = vec![dir.to_owned()];
        if let Some(v) = existing(var) {
            paths.extend(std::env::split_paths(&OsString::from(v)));
        }
        let joined = std::env::join_paths(paths)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| dir.to_string_lossy().into_owned());
        (var.to_owned(), joined)
    };
    out.push(prepend("JUPYTER_PATH", &data));
    out.push(prepend("JUPYTER_CONFIG_PATH", &config));
    Ok(out)
}

/// Writes `text` to `path` through a temporary file, unless it already holds it (servers
/// starting at once read it meanwhile).
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("atelier-kinds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn every_kind_has_its_row_and_jupyter_needs_nothing() {
        assert!(requirements(WorkspaceKind::Jupyter).is_empty());
        let names = |k| -> Vec<&str> { requirements(k).iter().map(|r| r.name).collect() };
        assert_eq!(names(WorkspaceKind::R), ["R", "IRkernel"]);
        assert_eq!(
            names(WorkspaceKind::Rstudio),
            ["rserver", "jupyter_rsession_proxy"]
        );
        assert_eq!(
            names(WorkspaceKind::Qgis),
            [
                "Xvnc",
                "websockify",
                "qgis",
                "jupyter_remote_desktop_proxy",
                "jupyter_server_proxy"
            ]
        );
        for kind in WorkspaceKind::ALL {
            for r in requirements(kind) {
                assert!(!r.provided_by.is_empty());
            }
        }
    }

    /// A fake machine: a PATH directory, a venv, an R library; each requirement appears only
    /// when its file does.
    #[test]
    fn lookups_follow_the_servers_path_venv_and_r_libraries() {
        let root = tempdir("lookup");
        let bin = root.join("bin");
        let venv = root.join("venv");
        let site = venv.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(
            venv.join("pyvenv.cfg"),
            "home = /nowhere/bin\ninclude-system-site-packages = false\n",
        )
        .unwrap();
        executable(&venv.join("bin/jupyterhub-singleuser"));
        let rlib = root.join("rlib");
        std::fs::create_dir_all(&rlib).unwrap();
        let vars = |bin: PathBuf, rlib: PathBuf| {
            move |k: &str| match k {
                "PATH" => Some(bin.to_string_lossy().into_owned()),
                "R_LIBS" => Some(rlib.to_string_lossy().into_owned()),
                _ => None,
            }
        };
        let program = venv.join("bin/jupyterhub-singleuser");
        let env = || Environment::of(&program.to_string_lossy(), vars(bin.clone(), rlib.clone()));
        let missing =
            |k| -> Vec<String> { env().missing(k).into_iter().map(|m| m.program).collect() };
        assert_eq!(env().python_sites, vec![site.clone()]);
        assert_eq!(
            missing(WorkspaceKind::Qgis),
            [
                "Xvnc",
                "websockify",
                "qgis",
                "jupyter_remote_desktop_proxy (Python package)",
                "jupyter_server_proxy (Python package)"
            ]
        );
        executable(&bin.join("Xvnc"));
        executable(&bin.join("qgis"));
        // Not executable: not a program.
        std::fs::write(bin.join("websockify"), "").unwrap();
        std::fs::create_dir_all(site.join("jupyter_server_proxy")).unwrap();
        assert_eq!(
            missing(WorkspaceKind::Qgis),
            [
                "websockify",
                "jupyter_remote_desktop_proxy (Python package)"
            ]
        );
        std::fs::set_permissions(
            bin.join("websockify"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir_all(site.join("jupyter_remote_desktop_proxy")).unwrap();
        assert!(missing(WorkspaceKind::Qgis).is_empty());

        // R: the program on the PATH, the package in a library.
        let r_missing = missing(WorkspaceKind::R);
        assert!(r_missing.contains(&"R".to_owned()), "{r_missing:?}");
        executable(&bin.join("R"));
        std::fs::create_dir_all(rlib.join("IRkernel")).unwrap();
        std::fs::write(rlib.join("IRkernel/DESCRIPTION"), "Package: IRkernel\n").unwrap();
        assert!(missing(WorkspaceKind::R).is_empty());
        assert_eq!(missing(WorkspaceKind::Jupyter), Vec::<String>::new());
        let rstudio = env().missing(WorkspaceKind::Rstudio);
        assert_eq!(rstudio[0].program, "rserver");
        assert!(rstudio[0].provided_by.contains("images/rstudio"));
        assert!(
            describe_missing(WorkspaceKind::Rstudio, &rstudio)
                .starts_with("a rstudio workspace cannot run on this machine: missing rserver (")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_bare_program_is_found_on_the_path_and_no_path_is_the_default() {
        let root = tempdir("bare");
        let venv = root.join("venv");
        executable(&venv.join("bin/jupyterhub-singleuser"));
        std::fs::create_dir_all(venv.join("lib/python3.12/site-packages")).unwrap();
        let path = venv.join("bin").to_string_lossy().into_owned();
        let env = Environment::of("jupyterhub-singleuser", |k| {
            (k == "PATH").then(|| path.clone())
        });
        assert_eq!(
            env.python_sites[0],
            venv.join("lib/python3.12/site-packages")
        );
        let env = Environment::of("/x/bin/y", |_| None);
        assert_eq!(
            env.path,
            vec![PathBuf::from("/bin"), PathBuf::from("/usr/bin")]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_cache_answers_from_one_lookup() {
        let cache = KindsCache::default();
        let calls = std::cell::Cell::new(0);
        let env = || {
            calls.set(calls.get() + 1);
            Environment::default()
        };
        let first = cache.missing(WorkspaceKind::Qgis, env);
        assert_eq!(first.len(), 5);
        let again = cache.missing(WorkspaceKind::R, || {
            calls.set(calls.get() + 1);
            Environment::default()
        });
        assert_eq!(again.len(), 2);
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn an_r_server_gets_its_kernelspec_and_default_kernel() {
        let root = tempdir("prepare");
        let bin = root.join("bin");
        executable(&bin.join("R"));
        let env = Environment {
            path: vec![bin.clone()],
            ..Environment::default()
        };
        let state = root.join("state");
        let vars = prepare(&state, WorkspaceKind::R, &env, |k| {
            (k == "JUPYTER_PATH").then(|| "/opt/jupyter".to_owned())
        })
        .unwrap();
        let data = state.join("kinds/r/share/jupyter");
        assert_eq!(
            vars,
            vec![
                ("JUPYTERHUB_DEFAULT_URL".to_owned(), "/lab".to_owned()),
                (
                    "JUPYTER_PATH".to_owned(),
                    format!("{}:/opt/jupyter", data.display())
                ),
                (
                    "JUPYTER_CONFIG_PATH".to_owned(),
                    state.join("kinds/r/etc/jupyter").display().to_string()
                ),
            ]
        );
        let spec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(data.join("kernels/ir/kernel.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(spec["argv"][0], bin.join("R").display().to_string());
        assert_eq!(spec["language"], "R");
        // Other kinds only get their default URL.
        assert_eq!(
            prepare(&state, WorkspaceKind::Qgis, &env, |_| None).unwrap(),
            vec![("JUPYTERHUB_DEFAULT_URL".to_owned(), "/desktop".to_owned())]
        );
        // No R: an error, nothing half-written elsewhere.
        let none = Environment::default();
        assert!(prepare(&root.join("other"), WorkspaceKind::R, &none, |_| None).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
