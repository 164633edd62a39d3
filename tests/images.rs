//! The container images (`images/<name>/Dockerfile`), checked by reading the Dockerfiles: every
//! base image pinned, a non-root final user, the expected entry point, no secrets baked in, and a
//! health check or a `# probe:` comment saying how Kubernetes probes the container.

use std::path::{Path, PathBuf};

/// The images and the program each must start.
const IMAGES: &[(&str, &str)] = &[
    ("atelier", "/usr/local/bin/atelier"),
    ("jupyter-pangeo", "jupyterhub-singleuser"),
    ("rstudio", "jupyterhub-singleuser"),
    ("qgis", "jupyterhub-singleuser"),
];

/// Each kind of workspace (`WorkspaceKind`), the image its profiles run on Kubernetes, and what
/// that image's `RUN`s must install for it.
const KIND_IMAGES: &[(&str, &str, &[&str])] = &[
    ("jupyter", "jupyter-pangeo", &["jupyterlab=="]),
    (
        "r",
        "rstudio",
        &["IRkernel", "IRkernel::installspec", "jupyterlab=="],
    ),
    ("rstudio", "rstudio", &["jupyter-rsession-proxy=="]),
    (
        "qgis",
        "qgis",
        &["jupyter-remote-desktop-proxy==", "jupyter-server-proxy=="],
    ),
];

/// One instruction: keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug, Clone, PartialEq)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

struct Dockerfile {
    path: PathBuf,
    instructions: Vec<Instruction>,
    comments: Vec<String>,
}

fn parse(text: &str) -> (Vec<Instruction>, Vec<String>) {
    let mut instructions = Vec::new();
    let mut comments = Vec::new();
    let mut pending: Option<(String, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') {
            comments.push(line.trim_start_matches('#').trim().to_owned());
            continue;
        }
        if line.is_empty() && pending.is_none() {
            continue;
        }
        let (mut buffer, start) = pending.take().unwrap_or((String::new(), i + 1));
        if let Some(head) = line.strip_suffix('\\') {
            buffer.push_str(head);
            buffer.push(' ');
            pending = Some((buffer, start));
            continue;
        }
        buffer.push_str(line);
        let (keyword, args) = buffer
            .split_once(char::is_whitespace)
            .unwrap_or((&buffer, ""));
        instructions.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
            line: start,
        });
    }
    if let Some((buffer, start)) = pending {
        panic!("line {start}: a continuation never ends: {buffer}");
    }
    (instructions, comments)
}

fn load(name: &str) -> Dockerfile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("images")
        .join(name)
        .join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (instructions, comments) = parse(&text);
    Dockerfile {
        path,
        instructions,
        comments,
    }
}

impl Dockerfile {
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    /// Instructions of the final stage (after the last FROM).
    fn final_stage(&self) -> &[Instruction] {
        let last_from = self
            .instructions
            .iter()
            .rposition(|i| i.keyword == "FROM")
            .unwrap_or_else(|| panic!("{}: no FROM", self.path.display()));
        &self.instructions[last_from..]
    }

    fn where_(&self, i: &Instruction) -> String {
        format!("{}:{}", self.path.display(), i.line)
    }
}

/// The image of a FROM (flags such as `--platform=` dropped) and its stage name, if any.
fn from_parts(args: &str) -> (String, Option<String>) {
    let words: Vec<&str> = args
        .split_whitespace()
        .filter(|w| !w.starts_with("--"))
        .collect();
    let image = words.first().copied().unwrap_or_default().to_owned();
    let stage = match words.as_slice() {
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
        _ => None,
    };
    (image, stage)
}

/// Pinned: a digest, or a tag that is not `latest` (and not a bare variable).
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => !tag.is_empty() && tag != "latest" && !tag.starts_with('$'),
        None => false,
    }
}

#[test]
fn every_base_image_is_pinned() {
    for (name, _) in IMAGES {
        let file = load(name);
        let mut stages = Vec::new();
        for from in file.all("FROM") {
            let (image, stage) = from_parts(&from.args);
            assert!(
                stages.contains(&image) || pinned(&image),
                "{}: FROM {image} is not pinned (a tag other than latest, or @sha256:…)",
                file.where_(from)
            );
            stages.extend(stage);
        }
        assert!(file.all("FROM").count() > 0, "{name}: no FROM");
    }
}

#[test]
fn the_final_stage_runs_as_a_non_root_user() {
    for (name, _) in IMAGES {
        let file = load(name);
        let user = file
            .final_stage()
            .iter()
            .rfind(|i| i.keyword == "USER")
            .unwrap_or_else(|| {
                panic!("{name}: the final stage sets no USER (it would run as root)")
            });
        let who = user.args.split(':').next().unwrap_or_default();
        assert!(
            !who.is_empty() && who != "root" && who != "0",
            "{}: the final USER is {:?}",
            file.where_(user),
            user.args
        );
    }
}

#[test]
fn each_image_starts_the_expected_program() {
    for (name, program) in IMAGES {
        let file = load(name);
        let stage = file.final_stage();
        let start: Vec<&Instruction> = stage
            .iter()
            .filter(|i| i.keyword == "ENTRYPOINT" || i.keyword == "CMD")
            .collect();
        assert!(
            start.iter().any(|i| i.args.contains(program)),
            "{name}: neither ENTRYPOINT nor CMD starts {program} ({start:?})"
        );
        if *name == "atelier" {
            let entrypoint = stage
                .iter()
                .rfind(|i| i.keyword == "ENTRYPOINT")
                .expect("atelier: an ENTRYPOINT");
            assert_eq!(entrypoint.args, r#"["/usr/local/bin/atelier"]"#);
        }
    }
}

/// `NAME=value` pairs of an ENV or ARG (also the legacy `ENV NAME value` form).
fn assignments(args: &str) -> Vec<(String, String)> {
    if !args.contains('=') {
        let (name, value) = args.split_once(char::is_whitespace).unwrap_or((args, ""));
        return vec![(name.to_owned(), value.trim().to_owned())];
    }
    args.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

#[test]
fn no_secret_is_baked_into_an_image() {
    for (name, _) in IMAGES {
        let file = load(name);
        for i in &file.instructions {
            assert!(
                !i.args.to_ascii_uppercase().contains("AWS_SECRET"),
                "{}: AWS_SECRET in {} {}",
                file.where_(i),
                i.keyword,
                i.args
            );
            if i.keyword != "ENV" && i.keyword != "ARG" {
                continue;
            }
            for (key, value) in assignments(&i.args) {
                let upper = key.to_ascii_uppercase();
                let secret = ["PASSWORD", "TOKEN", "SECRET"]
                    .iter()
                    .any(|w| upper.contains(w));
                assert!(
                    !secret || value.is_empty(),
                    "{}: {} {key} has a value baked in",
                    file.where_(i),
                    i.keyword
                );
            }
        }
    }
}

#[test]
fn each_image_says_how_it_is_probed() {
    for (name, _) in IMAGES {
        let file = load(name);
        let healthcheck = file
            .final_stage()
            .iter()
            .any(|i| i.keyword == "HEALTHCHECK");
        let probe_comment = file.comments.iter().any(|c| c.starts_with("probe:"));
        assert!(
            healthcheck || probe_comment,
            "{name}: neither a HEALTHCHECK nor a `# probe:` comment"
        );
    }
}

#[test]
fn the_parser_reads_continuations_stages_and_pins() {
    let (instructions, comments) = parse(
        "# probe: x\nFROM --platform=$BUILDPLATFORM rust:1.95 AS build\nRUN a \\\n  && b\n\nFROM build\nUSER 1000:100\nENV A=1 B_TOKEN=\n",
    );
    assert_eq!(comments, ["probe: x"]);
    let keywords: Vec<&str> = instructions.iter().map(|i| i.keyword.as_str()).collect();
    assert_eq!(keywords, ["FROM", "RUN", "FROM", "USER", "ENV"]);
    assert_eq!(instructions[1].args, "a  && b");
    assert_eq!(
        from_parts(&instructions[0].args),
        ("rust:1.95".to_owned(), Some("build".to_owned()))
    );
    assert!(pinned("rust:1.95-slim-bookworm"));
    assert!(pinned("gcr.io/distroless/cc-debian12@sha256:abc"));
    assert!(pinned("localhost:5000/atelier:0.1.0"));
    assert!(!pinned("localhost:5000/atelier"));
    assert!(!pinned("quay.io/jupyter/minimal-notebook:latest"));
    assert!(!pinned("ubuntu"));
    assert_eq!(
        assignments("A=1 B_TOKEN="),
        [("A".into(), "1".into()), ("B_TOKEN".into(), String::new())]
    );
}

#[test]
fn each_kind_has_an_image_with_its_programs() {
    let kinds: Vec<&str> = atelier::api::v1alpha1::WorkspaceKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    let listed: Vec<&str> = KIND_IMAGES.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(listed, kinds, "every kind, in WorkspaceKind::ALL's order");
    for (kind, image, needs) in KIND_IMAGES {
        assert!(IMAGES.iter().any(|(name, _)| name == image), "{image}");
        let file = load(image);
        let runs: Vec<&str> = file.all("RUN").map(|i| i.args.as_str()).collect();
        for need in *needs {
            assert!(
                runs.iter().any(|r| r.contains(need)),
                "{}: the {kind} kind needs {need} installed",
                file.path.display()
            );
        }
    }
}
