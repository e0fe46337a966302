//! Kubernetes workload manifests, edited in place.
//!
//! On an edge node (k3s, say) the kubelet finds a sideloaded image in containerd only when it is
//! told not to pull: `imagePullPolicy: Never` on every container, or it tries the registry over a
//! link that cannot carry an image (or, worse, a metered one). A release pipeline may also pin
//! each image to the digest the node will hold once its bundle is applied. This module does both
//! to the YAML people write and review: Deployment, DaemonSet, StatefulSet, ReplicaSet,
//! ReplicationController, Job, CronJob (`spec.jobTemplate.spec.template.spec`), Pod and
//! PodTemplate, alone, as `---` separated documents, or as the `items` of a `kind: List`; every
//! container of `containers`, `initContainers` and `ephemeralContainers`.
//!
//! Like [`deployment`](crate::deployment), the rewrite changes the bytes it must and no others.
//! The text is parsed with `saphyr-parser` (YAML 1.2) into a small tree that keeps where each
//! node starts; each change is a splice of the original text worked out from it: a replaced
//! scalar, written with the quotes it had, or an `imagePullPolicy` line inserted after the
//! `image:` line (after its comment), at the indentation of the container's keys and with that
//! line's ending. In a flow mapping (`{name: a, image: b}`, and so in a manifest written as JSON)
//! the new entry follows the image, separated like the entry before it. Comments, blank lines,
//! key order, quoting, flow or block style, CRLF line endings and a byte order mark stay as
//! written, and documents of other kinds (Service, ConfigMap, …) are not touched at all.
//!
//! What it deliberately does not do: resolve anchors, aliases, merge keys (`<<`) or keys
//! written twice on the way to a container or in it, or edit an image written as a multi-line,
//! escaped or tagged scalar. Each of those could change bytes, or values elsewhere in the file,
//! that the rewrite cannot see, so they are refused ([`KubernetesError::Refused`], naming the
//! file, the document and the reason) for a person to simplify. Nor does it expand templates: a
//! Helm chart's `{{ .Values.image }}` is not YAML until rendered, and a quoted one is reported
//! and never pinned. It does not check the rest of the workload against the Kubernetes API; only
//! what it reads must make sense.
//!
//! Tests: `cargo test -p sideload-fleet kubernetes`. Each fixture in `tests/data/kubernetes/`
//! has its rewrite beside it as `NAME.expected.EXT`, compared byte for byte;
//! `SIDELOAD_BLESS=1` writes them anew, to be reviewed as a diff.

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::manifest::{pinning, Change, ModuleImage, Pin, Pinning, Rewritten};

/// The container key the kubelet reads to decide whether it may pull.
const POLICY_KEY: &str = "imagePullPolicy";
/// The only policy a sideloaded node may be given (Kubernetes spells it with a capital N).
const NEVER: &str = "Never";
/// The container lists of a pod spec, in the order they are read.
const SECTIONS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
/// How deeply collections may nest. Workloads need about fifteen levels; the cap keeps a
/// hostile file from building a tree whose drop overflows the stack.
const MAX_DEPTH: usize = 128;

/// Why a Kubernetes manifest could not be read or rewritten.
///
/// Each names the file and the document (1 for the first; `---` starts the next), because a
/// pipeline handles several files of several documents each.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// Not YAML: the parser's message, with line and column.
    #[error("{file}: document {document}: not YAML: {message}")]
    Parse {
        /// The file, as the caller named it.
        file: String,
        /// The document, 1 for the first.
        document: usize,
        /// The parser's message, with line and column.
        message: String,
    },
    /// YAML, but no document is a workload with containers.
    #[error(
        "{file}: no Kubernetes workload in its {documents} documents: expected a Deployment, \
         DaemonSet, StatefulSet, ReplicaSet, ReplicationController, Job, CronJob, Pod or PodTemplate \
         (alone, in `---` separated documents or in a `kind: List`)"
    )]
    NoWorkload {
        /// The file, as the caller named it.
        file: String,
        /// How many documents it holds.
        documents: usize,
    },
    /// A workload the kubelet could not run either (no pod spec, a container without an image,
    /// an image that is not a string): say what was expected.
    #[error("{file}: document {document}: {workload}: {message}")]
    Invalid {
        /// The file, as the caller named it.
        file: String,
        /// The document, 1 for the first.
        document: usize,
        /// `KIND/NAME`.
        workload: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A spot the rewrite would have to change but cannot change safely.
    #[error(
        "{file}: document {document}: {workload}: {reason}; write it out plainly to rewrite it"
    )]
    Refused {
        /// The file, as the caller named it.
        file: String,
        /// The document, 1 for the first.
        document: usize,
        /// `KIND/NAME`.
        workload: String,
        /// What the rewrite will not edit, and where.
        reason: Refusal,
    },
}

/// What the rewrite will not edit, and where (`what`: a path such as `spec.template` or
/// `container app: image`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An alias (`*name`) stands where a value is needed: the edit would belong to its anchor.
    #[error("{what} is an alias (*)")]
    Alias {
        /// Where: a path such as `spec.template` or `container app: image`.
        what: String,
    },
    /// The value carries an anchor (`&name`): changing it would change every alias of it too.
    #[error("{what} carries an anchor (&), so changing it would change its aliases")]
    Anchor {
        /// Where: a path such as `spec.template` or `container app: image`.
        what: String,
    },
    /// Keys come in through a merge key (`<<`), so the value seen is not the one written here.
    #[error("{what} takes keys from a merge key (<<)")]
    MergeKey {
        /// Where: a path such as `spec.template` or `container app: image`.
        what: String,
    },
    /// The same key twice in one mapping: which one counts depends on the reader.
    #[error("{what} appears twice in one mapping")]
    DuplicateKey {
        /// Where: a path such as `spec.template` or `container app: image`.
        what: String,
    },
    /// A multi-line scalar (`|`, `>`, or a plain or quoted scalar folded over lines).
    #[error("{what} is a multi-line scalar")]
    MultiLine {
        /// Where: a path such as `spec.template` or `container app: image`.
        what: String,
    },
    /// A scalar whose text is not its value: escape sequences, or a tag (`!!str`).
    #[error("{what} is not written as its value (escape sequences or a tag)")]
    NotVerbatim {
        /// Where: a path such as `spec.template` or `container app: image`.
        what: String,
    },
    /// Something follows the image on its line besides a comment, so no line can follow it.
    #[error("{what}: its line holds more than the image and a comment")]
    CrowdedLine {
        /// Where: a path such as `spec.template` or `container app: image`.
        what: String,
    },
}

/// Parses `text` (named `file` in messages) and lists every container's image, in document
/// order, each section (`containers`, `initContainers`, `ephemeralContainers`) in that order
/// within a pod spec.
///
/// [`ModuleImage::module`] is the container's name and [`ModuleImage::workload`] its workload
/// (`KIND/NAME`, the name from `metadata.name` or `metadata.generateName`). A container without
/// an image is an error, as is a file without any workload: a silent skip would let a broken
/// manifest through the gate.
pub fn images(file: &str, text: &str) -> Result<Vec<ModuleImage>, KubernetesError> {
    let manifest = Manifest::read(file, text)?;
    Ok(manifest
        .containers
        .iter()
        .map(|container| ModuleImage {
            module: container.name.clone(),
            system: false,
            image: container.image.value.clone(),
            pull_policy: container.policy.as_ref().map(|p| p.value.clone()),
            workload: Some(container.workload.clone()),
        })
        .collect())
}

/// Sets `imagePullPolicy: Never` on every container (replacing any other value in the quotes it
/// had, or inserted after the `image:` line when absent) and, when `pin` returns a digest for an
/// image reference (called with the reference verbatim), rewrites `image` to `NAME:TAG@DIGEST`
/// (the same rules as [`deployment::rewrite`](crate::deployment::rewrite): an existing `@digest`
/// replaced, the registry host replaced when the [`Pin`] names one, template references with `$`
/// or `{{` never pinned and reported on every run, a malformed digest reported and not written).
/// Idempotent: rewriting the result changes nothing and reports only those notices. Every byte
/// outside the changed spots is kept.
pub fn rewrite(
    file: &str,
    text: &str,
    pin: &dyn Fn(&str) -> Option<Pin>,
) -> Result<Rewritten, KubernetesError> {
    let manifest = Manifest::read(file, text)?;
    let mut edits = Vec::new();
    let mut changes = Vec::new();
    for container in &manifest.containers {
        let mut change = |what: String| {
            changes.push(Change {
                module: container.name.clone(),
                what,
                workload: Some(container.workload.clone()),
            })
        };
        match &container.policy {
            Some(policy) if policy.value == NEVER => {}
            Some(policy) => {
                edits.push(Edit {
                    start: policy.start,
                    end: policy.end,
                    text: policy.quote.around(NEVER),
                });
                change(format!("{POLICY_KEY} {} -> {NEVER}", policy.value));
            }
            None => {
                edits.push(manifest.insert_policy(container)?);
                change(format!("{POLICY_KEY} set to {NEVER}"));
            }
        }
        let image = &container.image;
        match pinning(&image.value, pin) {
            Pinning::Keep => {}
            Pinning::Notice(what) => change(what),
            Pinning::Pinned(pinned) => {
                edits.push(Edit {
                    start: image.start,
                    end: image.end,
                    text: image.quote.around(&pinned),
                });
                change(format!("image {} -> {pinned}", image.value));
            }
        }
    }
    Ok(Rewritten {
        text: manifest.apply(edits),
        changes,
    })
}

/// Whether `text` reads as YAML (or JSON) with at least one document, or `List` item, that has
/// both `apiVersion` and `kind`: how [`ManifestKind::detect`](crate::manifest::ManifestKind)
/// recognises a Kubernetes manifest without needing it to be a valid workload.
pub fn looks_like(text: &str) -> bool {
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Ok((documents, _)) = parse("", body) else {
        return false;
    };
    documents.iter().any(|document| {
        document.root.as_ref().is_some_and(|root| {
            let has = |key: &str| matches!(root.lookup(key), Ok(Some(_)));
            has("apiVersion") && has("kind")
        })
    })
}

/// A node of the YAML tree, with where it starts in the text (bytes, after any byte order mark).
#[derive(Debug)]
struct Node {
    /// Where the node's first character (a quote, a bracket, an anchor or tag if it has one).
    start: usize,
    /// Where the parser says it ends: exact for plain scalars and flow collections; for quoted
    /// scalars it may run on over trailing spaces and a comment, so it is only used to tell a
    /// scalar on one line from one over several.
    end: usize,
    /// Whether it carries an anchor (`&name`).
    anchored: bool,
    /// Whether it carries a tag (`!!str`, `!custom`).
    tagged: bool,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Scalar {
        text: String,
        style: ScalarStyle,
    },
    Mapping {
        entries: Vec<(Node, Node)>,
        flow: bool,
    },
    Sequence {
        items: Vec<Node>,
    },
    Alias,
}

impl Node {
    /// The value of `key` in this mapping. None when it is not a mapping or lacks the key; a
    /// missing key in a mapping with a merge key (`<<`) is refused, since it may come from there,
    /// and so is a key written twice.
    fn lookup(&self, key: &str) -> Result<Option<&Node>, Refusal> {
        let Value::Mapping { entries, .. } = &self.value else {
            return Ok(None);
        };
        let mut merged = false;
        let mut found = None;
        for (k, v) in entries {
            if let Value::Scalar { text, style } = &k.value {
                if text == key {
                    if found.is_some() {
                        return Err(Refusal::DuplicateKey {
                            what: format!("`{key}`"),
                        });
                    }
                    found = Some(v);
                }
                merged |= text == "<<" && *style == ScalarStyle::Plain;
            }
        }
        if found.is_some() {
            Ok(found)
        } else if merged {
            Err(Refusal::MergeKey {
                what: format!("the mapping that would hold `{key}`"),
            })
        } else {
            Ok(None)
        }
    }

    /// The key node of `key` in this mapping (for where a container's `image` key stands).
    fn key(&self, key: &str) -> Option<&Node> {
        let Value::Mapping { entries, .. } = &self.value else {
            return None;
        };
        entries
            .iter()
            .map(|(k, _)| k)
            .find(|k| matches!(&k.value, Value::Scalar { text, .. } if text == key))
    }

    fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What a message calls this node's kind.
    fn describe(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } => "a scalar",
            Value::Mapping { .. } => "a mapping",
            Value::Sequence { .. } => "a sequence",
            Value::Alias => "an alias",
        }
    }
}

/// One document of the stream.
struct Document {
    /// 1 for the first.
    index: usize,
    root: Option<Node>,
}

/// Reads the event stream into one tree per document. Also returns the number of documents.
fn parse(file: &str, body: &str) -> Result<(Vec<Document>, usize), KubernetesError> {
    // The parser counts characters; splices need bytes.
    let offsets: Vec<usize> = body.char_indices().map(|(at, _)| at).collect();
    let byte =
        |marker: saphyr_parser::Marker| offsets.get(marker.index()).copied().unwrap_or(body.len());

    let mut trees = Trees::default();
    for event in Parser::new_from_str(body) {
        let (event, span) = event.map_err(|err| not_yaml(file, trees.count, err))?;
        trees
            .take(event, byte(span.start), byte(span.end))
            .map_err(|too_deep| not_yaml(file, trees.count, too_deep))?;
    }
    Ok((trees.documents, trees.count))
}

/// [`KubernetesError::Parse`] in the document being read (`count` of them started so far).
fn not_yaml(file: &str, count: usize, message: impl std::fmt::Display) -> KubernetesError {
    KubernetesError::Parse {
        file: file.to_string(),
        document: count.max(1),
        message: message.to_string(),
    }
}

/// A collection opened more than [`MAX_DEPTH`] levels deep.
#[derive(Debug, thiserror::Error)]
#[error("collections nested deeper than {MAX_DEPTH} levels")]
struct TooDeep;

/// A collection being read: its node so far and, in a mapping, a key waiting for its value.
struct Open {
    node: Node,
    key: Option<Node>,
}

/// The trees of a stream, built one parser event at a time.
#[derive(Default)]
struct Trees {
    /// The documents that have ended.
    documents: Vec<Document>,
    /// How many documents have started (the current one's index).
    count: usize,
    /// The collections open in the current document, innermost last.
    stack: Vec<Open>,
    /// The current document's root, once read.
    root: Option<Node>,
}

impl Trees {
    /// Takes one event, which spans `start..end` (bytes).
    fn take(&mut self, event: Event, start: usize, end: usize) -> Result<(), TooDeep> {
        let done = match event {
            Event::DocumentStart(_) => {
                self.count += 1;
                self.root = None;
                return Ok(());
            }
            Event::DocumentEnd => {
                self.documents.push(Document {
                    index: self.count,
                    root: self.root.take(),
                });
                return Ok(());
            }
            Event::Scalar(text, style, anchor, tag) => Node {
                start,
                end,
                anchored: anchor != 0,
                tagged: tag.is_some(),
                value: Value::Scalar {
                    text: text.into_owned(),
                    style,
                },
            },
            Event::Alias(_) => Node {
                start,
                end,
                anchored: false,
                tagged: false,
                value: Value::Alias,
            },
            Event::MappingStart(anchor, ref tag) | Event::SequenceStart(anchor, ref tag) => {
                let mapping = matches!(event, Event::MappingStart(..));
                return self.open(mapping, anchor != 0, tag.is_some(), start, end);
            }
            Event::MappingEnd | Event::SequenceEnd => self.close(start, end),
            Event::StreamStart | Event::StreamEnd | Event::Nothing => return Ok(()),
        };
        self.attach(done);
        Ok(())
    }

    /// Opens a mapping (or else a sequence) whose start event spans `start..end`.
    fn open(
        &mut self,
        mapping: bool,
        anchored: bool,
        tagged: bool,
        start: usize,
        end: usize,
    ) -> Result<(), TooDeep> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(TooDeep);
        }
        let value = if mapping {
            Value::Mapping {
                entries: Vec::new(),
                flow: false,
            }
        } else {
            Value::Sequence { items: Vec::new() }
        };
        self.stack.push(Open {
            node: Node {
                start,
                end,
                anchored,
                tagged,
                value,
            },
            key: None,
        });
        Ok(())
    }

    /// Closes the innermost collection, whose end event spans `start..end`, and returns it.
    fn close(&mut self, start: usize, end: usize) -> Node {
        let mut open = self.stack.pop().expect("the parser balances collections");
        open.node.end = end;
        // A flow collection ends at its bracket; a block one ends on nothing.
        if let Value::Mapping { flow, .. } = &mut open.node.value {
            *flow = end > start;
        }
        open.node
    }

    /// Puts a finished node where it belongs: the document's root, a mapping's key or value,
    /// or a sequence's next item.
    fn attach(&mut self, done: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(done),
            Some(open) => match &mut open.node.value {
                Value::Mapping { entries, .. } => match open.key.take() {
                    None => open.key = Some(done),
                    Some(key) => entries.push((key, done)),
                },
                Value::Sequence { items } => items.push(done),
                _ => unreachable!("only collections are open"),
            },
        }
    }
}

/// How a scalar is quoted, so a replacement is quoted the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Plain,
    Double,
    Single,
}

impl Quote {
    fn mark(self) -> &'static str {
        match self {
            Quote::Plain => "",
            Quote::Double => "\"",
            Quote::Single => "'",
        }
    }

    /// `value` quoted this way. Only image references and `Never` are written, which need no
    /// escaping in any of the three styles.
    fn around(self, value: &str) -> String {
        format!("{0}{value}{0}", self.mark())
    }
}

/// A one-line scalar whose text is exactly its value (in quotes or not), so it can be replaced.
#[derive(Debug)]
struct Located {
    value: String,
    /// From the opening quote, if any...
    start: usize,
    /// ...to after the closing one.
    end: usize,
    quote: Quote,
}

/// `node` as a scalar that can be edited in place, or why it cannot be. A node that is no scalar
/// at all is `Ok(None)` (the caller knows what it expected).
fn locate(body: &str, node: &Node, what: &str) -> Result<Option<Located>, Refusal> {
    let what = || what.to_string();
    let (text, style) = match &node.value {
        Value::Scalar { text, style } => (text, *style),
        Value::Alias => return Err(Refusal::Alias { what: what() }),
        _ => return Ok(None),
    };
    if node.anchored {
        return Err(Refusal::Anchor { what: what() });
    }
    let quote = match style {
        ScalarStyle::Plain => Quote::Plain,
        ScalarStyle::DoubleQuoted => Quote::Double,
        ScalarStyle::SingleQuoted => Quote::Single,
        ScalarStyle::Literal | ScalarStyle::Folded => {
            return Err(Refusal::MultiLine { what: what() })
        }
    };
    let written = quote.around(text);
    let verbatim = !node.tagged
        && !text.contains(['\n', '\r'])
        && body[node.start..].starts_with(&written)
        // A plain scalar's extent is exact: nothing of it may follow what was matched.
        && (quote != Quote::Plain || node.end == node.start + written.len());
    if !verbatim {
        let spread = body.get(node.start..node.end).unwrap_or("");
        return Err(if spread.contains('\n') && !node.tagged {
            Refusal::MultiLine { what: what() }
        } else {
            Refusal::NotVerbatim { what: what() }
        });
    }
    Ok(Some(Located {
        value: text.clone(),
        start: node.start,
        end: node.start + written.len(),
        quote,
    }))
}

/// One container and the spots a rewrite touches.
struct Container {
    document: usize,
    /// `KIND/NAME`.
    workload: String,
    name: String,
    image: Located,
    /// Where the `image` key starts (its indentation is the container's), how it is quoted,
    /// and what separates it from its value when that is just a colon and spaces.
    image_key: (usize, Quote, Option<String>),
    policy: Option<Located>,
    /// Whether the container is a flow mapping (`{name: a, image: b}`).
    flow: bool,
}

/// The manifest as read: the text and every container found in it.
struct Manifest {
    file: String,
    bom: String,
    body: String,
    containers: Vec<Container>,
}

/// Where the reader is, for the errors it raises.
struct Context<'a> {
    file: &'a str,
    document: usize,
    workload: String,
}

impl Context<'_> {
    fn refused(&self, reason: Refusal) -> KubernetesError {
        KubernetesError::Refused {
            file: self.file.to_string(),
            document: self.document,
            workload: self.workload.clone(),
            reason,
        }
    }

    fn invalid(&self, message: String) -> KubernetesError {
        KubernetesError::Invalid {
            file: self.file.to_string(),
            document: self.document,
            workload: self.workload.clone(),
            message,
        }
    }
}

/// The path from a workload object to its pod spec, by kind; None for kinds without one.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template", "spec"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        "Pod" => Some(&["spec"]),
        "PodTemplate" => Some(&["template", "spec"]),
        _ => None,
    }
}

impl Manifest {
    fn read(file: &str, text: &str) -> Result<Self, KubernetesError> {
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        let bom = text[..text.len() - body.len()].to_string();
        let (documents, count) = parse(file, body)?;
        let mut manifest = Manifest {
            file: file.to_string(),
            bom,
            body: body.to_string(),
            containers: Vec::new(),
        };
        let mut workloads = 0;
        for document in &documents {
            let Some(root) = &document.root else {
                continue;
            };
            let mut context = Context {
                file,
                document: document.index,
                workload: "the document".to_string(),
            };
            let kind = root.lookup("kind").map_err(|r| context.refused(r))?;
            if kind.and_then(Node::scalar) == Some("List") {
                context.workload = "List".to_string();
                let items = root.lookup("items").map_err(|r| context.refused(r))?;
                match items.map(|items| &items.value) {
                    Some(Value::Sequence { items }) => {
                        for item in items {
                            workloads += manifest.read_object(item, document.index)?;
                        }
                    }
                    Some(Value::Alias) => {
                        return Err(context.refused(Refusal::Alias {
                            what: "`items`".to_string(),
                        }))
                    }
                    Some(_) => {
                        return Err(context.invalid(format!(
                            "`items` is {}, expected a sequence of objects",
                            items.map_or("missing", Node::describe)
                        )))
                    }
                    None => {}
                }
            } else {
                workloads += manifest.read_object(root, document.index)?;
            }
        }
        if workloads == 0 {
            return Err(KubernetesError::NoWorkload {
                file: file.to_string(),
                documents: count,
            });
        }
        Ok(manifest)
    }

    /// Reads one object (a document or a `List` item): its containers if it is a workload.
    /// Returns 1 for a workload, 0 for another kind.
    fn read_object(&mut self, object: &Node, document: usize) -> Result<usize, KubernetesError> {
        let mut context = Context {
            file: &self.file,
            document,
            workload: "the document".to_string(),
        };
        if let Value::Alias = object.value {
            return Err(context.refused(Refusal::Alias {
                what: "a `List` item".to_string(),
            }));
        }
        let kind = object.lookup("kind").map_err(|r| context.refused(r))?;
        let Some(path) = kind.and_then(Node::scalar).and_then(pod_spec_path) else {
            return Ok(0);
        };
        let kind = kind.and_then(Node::scalar).unwrap_or_default();
        let metadata = object.lookup("metadata").map_err(|r| context.refused(r))?;
        let name = match metadata {
            Some(metadata) => metadata
                .lookup("name")
                .and_then(|name| match name {
                    None => metadata.lookup("generateName"),
                    some => Ok(some),
                })
                .map_err(|r| context.refused(r))?
                .and_then(Node::scalar)
                .unwrap_or_default(),
            None => "",
        };
        context.workload = format!("{kind}/{name}");

        let mut spec = object;
        for (depth, key) in path.iter().enumerate() {
            let where_ = format!("`{}`", path[..=depth].join("."));
            spec = match spec.lookup(key).map_err(|r| context.refused(r))? {
                Some(node) if matches!(node.value, Value::Alias) => {
                    return Err(context.refused(Refusal::Alias { what: where_ }))
                }
                Some(node) if matches!(node.value, Value::Mapping { .. }) => node,
                other => {
                    return Err(context.invalid(format!(
                        "{where_} is {}, expected a mapping (the pod spec at `{}`)",
                        other.map_or("missing", Node::describe),
                        path.join(".")
                    )))
                }
            };
        }
        let pod = path.join(".");
        if spec
            .lookup("containers")
            .map_err(|r| context.refused(r))?
            .is_none()
        {
            return Err(context.invalid(format!(
                "`{pod}` has no `containers`; the kubelet could not run it either"
            )));
        }
        for section in SECTIONS {
            let where_ = format!("`{pod}.{section}`");
            let items = match spec.lookup(section).map_err(|r| context.refused(r))? {
                None => continue,
                Some(Node {
                    value: Value::Sequence { items },
                    ..
                }) => items,
                Some(Node {
                    value: Value::Alias,
                    ..
                }) => return Err(context.refused(Refusal::Alias { what: where_ })),
                Some(other) => {
                    return Err(context.invalid(format!(
                        "{where_} is {}, expected a sequence of containers",
                        other.describe()
                    )))
                }
            };
            for (index, item) in items.iter().enumerate() {
                let container = self.read_container(item, &context, &where_, index)?;
                self.containers.push(container);
            }
        }
        Ok(1)
    }

    fn read_container(
        &self,
        item: &Node,
        context: &Context,
        section: &str,
        index: usize,
    ) -> Result<Container, KubernetesError> {
        let flow = match &item.value {
            Value::Mapping { flow, .. } => *flow,
            Value::Alias => {
                return Err(context.refused(Refusal::Alias {
                    what: format!("{section} item {}", index + 1),
                }))
            }
            _ => {
                return Err(context.invalid(format!(
                    "{section} item {} is {}, expected a container (a mapping)",
                    index + 1,
                    item.describe()
                )))
            }
        };
        let refused = |r| context.refused(r);
        let name = item
            .lookup("name")
            .map_err(refused)?
            .and_then(Node::scalar)
            .map_or_else(|| format!("#{}", index + 1), str::to_string);
        let what = |key: &str| format!("container {name}: `{key}`");

        let Some(image_node) = item.lookup("image").map_err(refused)? else {
            return Err(context.invalid(format!(
                "container {name} has no `image`; the kubelet could not run it either"
            )));
        };
        let image = locate(&self.body, image_node, &what("image"))
            .map_err(refused)?
            .filter(|image| !image.value.is_empty())
            .ok_or_else(|| {
                context.invalid(format!(
                    "container {name}: `image` is {}, not an image reference{}",
                    if image_node.scalar().is_some() {
                        "empty"
                    } else {
                        image_node.describe()
                    },
                    if matches!(image_node.value, Value::Mapping { .. }) {
                        " (an unquoted template? render it first, or quote it)"
                    } else {
                        ""
                    }
                ))
            })?;
        let key = item.key("image").expect("the key of a value just found");
        let key_located = locate(&self.body, key, &what("image")).ok().flatten();
        let key_quote = key_located.as_ref().map_or(Quote::Plain, |k| k.quote);
        let separator = key_located.and_then(|k| {
            let between = self.body.get(k.end..image_node.start)?;
            let ok = between.trim_matches([' ', '\t']) == ":";
            ok.then(|| between.to_string())
        });

        let policy = match item.lookup(POLICY_KEY).map_err(refused)? {
            None => None,
            Some(node) => Some(
                locate(&self.body, node, &what(POLICY_KEY))
                    .map_err(refused)?
                    .filter(|policy| !policy.value.is_empty())
                    .ok_or_else(|| {
                        context.invalid(format!(
                            "container {name}: `{POLICY_KEY}` is {}, expected Always, IfNotPresent or Never",
                            if node.scalar().is_some() { "empty" } else { node.describe() }
                        ))
                    })?,
            ),
        };
        Ok(Container {
            document: context.document,
            workload: context.workload.clone(),
            name,
            image,
            image_key: (key.start, key_quote, separator),
            policy,
            flow,
        })
    }

    /// The edit that adds `imagePullPolicy: Never` to `container`, spelled like its `image`
    /// key (quotes, separator).
    ///
    /// In a block mapping: a line of its own after the image's line (after any comment ending
    /// it), indented like the `image` key and ended like that line; at the end of a file without
    /// a final line break, a line break like the file's first goes before it. In a flow mapping:
    /// straight after the image value, separated by the comma and spacing that come before the
    /// `image` key (so a JSON file stays JSON and a one-line mapping one line).
    fn insert_policy(&self, container: &Container) -> Result<Edit, KubernetesError> {
        let body = self.body.as_str();
        let (key_start, quote, separator) = &container.image_key;
        let entry = format!(
            "{}{}{}",
            quote.around(POLICY_KEY),
            separator.as_deref().unwrap_or(": "),
            quote.around(NEVER)
        );
        let at = container.image.end;
        if container.flow {
            let before = body[..*key_start].trim_end_matches([' ', '\t', '\r', '\n']);
            let comma = if before.ends_with(',') {
                &body[before.len() - 1..*key_start]
            } else {
                ", "
            };
            return Ok(Edit {
                start: at,
                end: at,
                text: format!("{comma}{entry}"),
            });
        }

        // YAML breaks lines at LF, CRLF and a lone CR alike.
        let line_start = body[..*key_start]
            .rfind(['\n', '\r'])
            .map_or(0, |at| at + 1);
        let prefix = &body[line_start..*key_start];
        let indent = if prefix.bytes().all(|b| b == b' ') {
            prefix.to_string()
        } else {
            // After `- ` or `? `: the key's column, in spaces (YAML indents with spaces only).
            " ".repeat(prefix.chars().count())
        };
        let rest = &body[at..];
        let (line, newline) = match rest.find(['\n', '\r']) {
            Some(end) if rest[end..].starts_with("\r\n") => (&rest[..end], Some("\r\n")),
            Some(end) => (&rest[..end], Some(&rest[end..=end])),
            None => (rest, None),
        };
        let after = line.trim_start_matches([' ', '\t']);
        if !(after.is_empty() || (after.starts_with('#') && after.len() < line.len())) {
            let context = Context {
                file: &self.file,
                document: container.document,
                workload: container.workload.clone(),
            };
            return Err(context.refused(Refusal::CrowdedLine {
                what: format!("container {}: `image`", container.name),
            }));
        }
        Ok(match newline {
            Some(newline) => {
                let end = at + line.len() + newline.len();
                Edit {
                    start: end,
                    end,
                    text: format!("{indent}{entry}{newline}"),
                }
            }
            None => {
                let newline = if body.contains("\r\n") { "\r\n" } else { "\n" };
                Edit {
                    start: body.len(),
                    end: body.len(),
                    text: format!("{newline}{indent}{entry}"),
                }
            }
        })
    }

    /// Splices `edits` into the text; they never overlap (each replaces one scalar, or inserts
    /// at the end of an image's line or straight after an image in a flow mapping).
    fn apply(&self, mut edits: Vec<Edit>) -> String {
        edits.sort_by_key(|edit| std::cmp::Reverse(edit.start));
        let mut text = self.body.clone();
        for edit in edits {
            text.replace_range(edit.start..edit.end, &edit.text);
        }
        format!("{}{}", self.bom, text)
    }
}

/// Replace `start..end` of the text (after any byte order mark) by `text`.
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::RegistryHost;
    use std::cell::RefCell;

    /// Each fixture with the golden output of [`rewrite`] under [`pins`].
    macro_rules! fixture {
        ($name:literal, $ext:literal) => {
            (
                concat!($name, ".", $ext),
                include_str!(concat!("../tests/data/kubernetes/", $name, ".", $ext)),
                include_str!(concat!(
                    "../tests/data/kubernetes/",
                    $name,
                    ".expected.",
                    $ext
                )),
            )
        };
    }

    const GOLDEN: [(&str, &str, &str); 11] = [
        fixture!("deployment-comments", "yaml"),
        fixture!("deployment-crlf", "yaml"),
        fixture!("multi-document", "yaml"),
        fixture!("init-containers", "yaml"),
        fixture!("quoted-images", "yaml"),
        fixture!("trailing-comment", "yaml"),
        fixture!("already-pinned", "yaml"),
        fixture!("helm-template", "yaml"),
        fixture!("flow-container", "yaml"),
        fixture!("list", "yaml"),
        fixture!("pod", "json"),
    ];

    fn fixture(name: &str) -> &'static str {
        GOLDEN
            .iter()
            .find(|(file, _, _)| *file == name)
            .map(|(_, text, _)| *text)
            .unwrap_or_else(|| panic!("no fixture {name}"))
    }

    fn refusing(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/data/kubernetes/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// What the fixtures' images are pinned to, keyed by the reference without its digest (so a
    /// second run finds the same pin). `edge/store-migrate:3` and `nginx:1.27` have none.
    fn pin_of(reference: &str) -> Option<Pin> {
        let name = reference
            .split_once('@')
            .map_or(reference, |(name, _)| name);
        let c = match name {
            "registry.example/edge/app:v2" => 'a',
            "edge/sidecar:1.4" => 'b',
            "edge/uploader:1.0" => 'c',
            "busybox" => 'd',
            "edge/app:v2" => 'e',
            "edge/store:3" => 'f',
            "edge/probe:2.0" => '1',
            "edge/probe-helper:2.0" => '2',
            "edge/probe-agent:2.0" => '3',
            "edge/app:v1" => '4',
            "edge/last:1" => '5',
            "edge/tool:1" => '2',
            "edge/b:1" => '6',
            "edge/c:1" => '7',
            _ => return None,
        };
        Some(Pin {
            digest: digest(c),
            registry: None,
        })
    }

    fn pins(reference: &str) -> Option<Pin> {
        pin_of(reference)
    }

    fn no_pins(_: &str) -> Option<Pin> {
        None
    }

    /// The lines of `text`, each with its line ending.
    fn lines(text: &str) -> Vec<&str> {
        text.split_inclusive('\n').collect()
    }

    /// Checks that `after` is `before` with only the rewrite's changes: whole lines that are an
    /// inserted `imagePullPolicy: Never`, and within a line one stretch where an image reference
    /// or a pull policy was replaced (possibly followed, in a flow mapping, by the new entry).
    fn assert_only_changed_spots(file: &str, before: &str, after: &str) {
        let (old, new) = (lines(before), lines(after));
        let policy_line = |line: &str| {
            let bare: String = line.chars().filter(|c| !"\"', \r\n".contains(*c)).collect();
            bare == "imagePullPolicy:Never"
        };
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            if i < old.len() && j < new.len() && old[i] == new[j] {
                i += 1;
                j += 1;
            } else if j < new.len()
                && policy_line(new[j])
                && !old.get(i).is_some_and(|line| line.contains(POLICY_KEY))
            {
                j += 1;
            } else {
                assert!(
                    i < old.len() && j < new.len(),
                    "{file}: line {} differs",
                    i + 1
                );
                let (a, mut b) = (old[i], new[j]);
                if !a.ends_with('\n') {
                    // The last line of a file without a final line break, followed by an inserted
                    // line: the line break came with the insertion.
                    b = b.trim_end_matches(['\r', '\n']);
                }
                let prefix = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
                let suffix = a[prefix..]
                    .bytes()
                    .rev()
                    .zip(b[prefix..].bytes().rev())
                    .take_while(|(x, y)| x == y)
                    .count();
                let (was, is) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
                // The change starts in the value of an `image` or `imagePullPolicy` key and ends
                // where the value does (before a quote, a comment, or the rest of a flow mapping).
                let head = &a[..prefix];
                let tail = a[a.len() - suffix..]
                    .trim_start_matches(['"', '\''])
                    .trim_start();
                assert!(
                    head.rfind("image")
                        .is_some_and(|key| head[key..].contains(':'))
                        && (tail.is_empty() || tail.starts_with(['#', ',', '}'])),
                    "{file}: line {}: {was:?} became {is:?}",
                    i + 1
                );
                assert!(
                    is.contains("sha256:")
                        || is.contains(NEVER)
                        || (!is.is_empty() && is.bytes().all(|b| b.is_ascii_hexdigit())),
                    "{file}: line {}: {was:?} became {is:?}",
                    i + 1
                );
                i += 1;
                j += 1;
            }
        }
    }

    fn assert_idempotent(file: &str, first: &Rewritten) {
        let again = rewrite(file, &first.text, &pins).unwrap();
        assert_eq!(
            again.text, first.text,
            "{file}: a second rewrite changed it"
        );
        let notices: Vec<Change> = first
            .changes
            .iter()
            .filter(|c| c.what.contains("not pinned"))
            .cloned()
            .collect();
        assert_eq!(
            again.changes, notices,
            "{file}: a second rewrite reported changes"
        );
        for image in images(file, &first.text).unwrap() {
            assert_eq!(
                image.pull_policy.as_deref(),
                Some(NEVER),
                "{file}: {image:?}"
            );
        }
    }

    #[test]
    fn fixtures_keep_their_line_endings() {
        let crlf = fixture("deployment-crlf.yaml");
        assert!(crlf.contains("\r\n") && !crlf.replace("\r\n", "").contains('\n'));
        assert_eq!(
            crlf,
            fixture("deployment-comments.yaml").replace('\n', "\r\n")
        );
        assert!(!fixture("trailing-comment.yaml").ends_with('\n'));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // SIDELOAD_BLESS=1 rewrites the golden files
    fn rewrites_match_the_golden_files_byte_for_byte() {
        for (file, text, expected) in GOLDEN {
            let out = rewrite(file, text, &pins).unwrap();
            if std::env::var_os("SIDELOAD_BLESS").is_some() {
                let path = format!(
                    "{}/tests/data/kubernetes/{}",
                    env!("CARGO_MANIFEST_DIR"),
                    file.replacen('.', ".expected.", 1)
                );
                std::fs::write(path, &out.text).unwrap();
                continue;
            }
            assert_eq!(out.text, expected, "{file}");
            assert_only_changed_spots(file, text, &out.text);
            assert_idempotent(file, &out);
        }
    }

    #[test]
    fn crlf_is_kept_everywhere_including_inserted_lines() {
        let lf = rewrite("lf.yaml", fixture("deployment-comments.yaml"), &pins).unwrap();
        let crlf = rewrite("crlf.yaml", fixture("deployment-crlf.yaml"), &pins).unwrap();
        assert_eq!(crlf.text, lf.text.replace('\n', "\r\n"));
        assert_eq!(crlf.changes, lf.changes);
    }

    /// Found by the `kubernetes_manifest` fuzz target: YAML also breaks lines at a lone CR
    /// (old Mac line ends), so the policy line inserted after `image:` took the previous
    /// line's text as its indentation and the rewritten manifest no longer parsed.
    #[test]
    fn a_lone_carriage_return_is_a_line_break_for_inserted_lines() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: debug\nspec:\n  containers:\n  - name: shell\r    image: busybox\r  - name: two\n    image: nginx:1.27\n";
        assert_eq!(images("cr.yaml", text).unwrap().len(), 2);
        let out = rewrite("cr.yaml", text, &pins).unwrap();
        let again = images("cr.yaml", &out.text).unwrap();
        assert_eq!(again.len(), 2, "{:?}", out.text);
        assert!(
            again
                .iter()
                .all(|i| i.pull_policy.as_deref() == Some("Never")),
            "{:?}",
            out.text
        );
        assert!(
            out.text
                .contains("\r    imagePullPolicy: Never\r  - name: two\n"),
            "{:?}",
            out.text
        );
        assert_idempotent("cr.yaml", &out);
    }

    fn listed(image: &ModuleImage) -> (String, String, String, Option<String>) {
        (
            image.workload.clone().unwrap(),
            image.module.clone(),
            image.image.clone(),
            image.pull_policy.clone(),
        )
    }

    fn row(
        workload: &str,
        container: &str,
        image: &str,
        policy: Option<&str>,
    ) -> (String, String, String, Option<String>) {
        (
            workload.to_string(),
            container.to_string(),
            image.to_string(),
            policy.map(str::to_string),
        )
    }

    #[test]
    fn images_are_listed_as_written_in_document_and_section_order() {
        let list = |file: &str| -> Vec<_> {
            images(file, fixture(file))
                .unwrap()
                .iter()
                .map(listed)
                .collect()
        };
        assert_eq!(
            list("deployment-comments.yaml"),
            vec![
                row(
                    "Deployment/gateway",
                    "app",
                    "registry.example/edge/app:v2",
                    None
                ),
                row(
                    "Deployment/gateway",
                    "sidecar",
                    "edge/sidecar:1.4",
                    Some("IfNotPresent")
                ),
            ]
        );
        assert_eq!(
            list("multi-document.yaml"),
            vec![
                row(
                    "Deployment/gateway",
                    "app",
                    "registry.example/edge/app:v2",
                    Some("Always")
                ),
                row("CronJob/upload", "uploader", "edge/uploader:1.0", None),
                row("Pod/debug-", "shell", "busybox", None),
                row("Pod/debug-", "debugger", "nginx:1.27", None),
            ]
        );
        assert_eq!(
            list("init-containers.yaml"),
            vec![
                row("StatefulSet/store", "store", "edge/store:3", None),
                row("StatefulSet/store", "migrate", "edge/store-migrate:3", None),
            ]
        );
        assert_eq!(
            list("quoted-images.yaml"),
            vec![
                row(
                    "DaemonSet/probe",
                    "double",
                    "edge/probe:2.0",
                    Some("Always")
                ),
                row("DaemonSet/probe", "single", "edge/probe-helper:2.0", None),
                row("DaemonSet/probe", "json-ish", "edge/probe-agent:2.0", None),
            ]
        );
        assert_eq!(
            list("list.yaml"),
            vec![row("ReplicaSet/rs", "app", "edge/app:v2", None)]
        );
        assert_eq!(
            list("pod.json"),
            vec![row("Pod/from-kubectl", "app", "edge/app:v2", None)]
        );
        assert_eq!(
            list("helm-template.yaml"),
            vec![
                row(
                    "Deployment/charted",
                    "app",
                    "{{ .Values.image.repository }}:{{ .Values.image.tag }}",
                    None
                ),
                row("Deployment/charted", "env", "${REGISTRY}/edge/app:v2", None),
            ]
        );
        let flow = images("flow-container.yaml", fixture("flow-container.yaml")).unwrap();
        assert_eq!(flow.len(), 3);
        assert!(flow.iter().all(|image| !image.system));
    }

    fn change(workload: &str, container: &str, what: &str) -> Change {
        Change {
            module: container.to_string(),
            what: what.to_string(),
            workload: Some(workload.to_string()),
        }
    }

    #[test]
    fn changes_are_reported_per_container_policy_first() {
        let out = rewrite("d.yaml", fixture("deployment-comments.yaml"), &pins).unwrap();
        let w = "Deployment/gateway";
        assert_eq!(
            out.changes,
            vec![
                change(w, "app", "imagePullPolicy set to Never"),
                change(
                    w,
                    "app",
                    &format!(
                        "image registry.example/edge/app:v2 -> registry.example/edge/app:v2@{}",
                        digest('a')
                    )
                ),
                change(w, "sidecar", "imagePullPolicy IfNotPresent -> Never"),
                change(
                    w,
                    "sidecar",
                    &format!("image edge/sidecar:1.4 -> edge/sidecar:1.4@{}", digest('b'))
                ),
            ]
        );
        assert_eq!(
            out.changes[0].to_string(),
            "Deployment/gateway app: imagePullPolicy set to Never"
        );
    }

    #[test]
    fn without_pins_only_the_policy_changes() {
        let text = fixture("multi-document.yaml");
        let out = rewrite("m.yaml", text, &no_pins).unwrap();
        assert!(!out.text.contains("@sha256"));
        assert_eq!(out.text.matches("imagePullPolicy: Never").count(), 4);
        assert_only_changed_spots("m.yaml", text, &out.text);
        // The Service and the ConfigMap, documents 1 and 4, are byte for byte as written.
        let documents =
            |text: &str| -> Vec<String> { text.split("\n---\n").map(str::to_string).collect() };
        let (before, after) = (documents(text), documents(&out.text));
        assert_eq!(before[0], after[0]);
        assert_eq!(before[3], after[3]);
    }

    #[test]
    fn templates_are_reported_and_never_pinned_nor_asked_about() {
        let asked = RefCell::new(Vec::new());
        let pin = |reference: &str| {
            asked.borrow_mut().push(reference.to_string());
            pins("edge/app:v2")
        };
        let out = rewrite("h.yaml", fixture("helm-template.yaml"), &pin).unwrap();
        assert!(asked.borrow().is_empty(), "{:?}", asked.borrow());
        let w = "Deployment/charted";
        assert_eq!(
            out.changes,
            vec![
                change(w, "app", "imagePullPolicy set to Never"),
                change(
                    w,
                    "app",
                    "image {{ .Values.image.repository }}:{{ .Values.image.tag }} not pinned: template variable"
                ),
                change(w, "env", "imagePullPolicy set to Never"),
                change(
                    w,
                    "env",
                    "image ${REGISTRY}/edge/app:v2 not pinned: template variable"
                ),
            ]
        );
    }

    #[test]
    fn an_existing_digest_is_replaced_and_a_current_one_kept() {
        let out = rewrite("p.yaml", fixture("already-pinned.yaml"), &pins).unwrap();
        assert_eq!(
            out.changes,
            vec![change(
                "Job/once",
                "stale",
                &format!(
                    "image edge/app:v2@{} -> edge/app:v2@{}",
                    digest('0'),
                    digest('e')
                )
            )]
        );
    }

    #[test]
    fn a_device_registry_renames_pinned_references_only() {
        let registry: RegistryHost = "127.0.0.1:5000".parse().unwrap();
        let pin = |reference: &str| {
            pin_of(reference)
                .filter(|_| !reference.starts_with("edge/sidecar"))
                .map(|pin| Pin {
                    registry: Some(registry.clone()),
                    ..pin
                })
        };
        let text = fixture("deployment-comments.yaml");
        let out = rewrite("d.yaml", text, &pin).unwrap();
        assert!(out.text.contains(&format!(
            "        image: 127.0.0.1:5000/edge/app:v2@{}\n        imagePullPolicy: Never\n",
            digest('a')
        )));
        // Not pinned, so not renamed.
        assert!(out.text.contains("        image: edge/sidecar:1.4\n"));
        let again = rewrite("d.yaml", &out.text, &pin).unwrap();
        assert_eq!(again.text, out.text);
        assert!(again.changes.is_empty());
        // Docker Hub's short names keep the path the registry stores them under.
        let out = rewrite("m.yaml", fixture("multi-document.yaml"), &pin).unwrap();
        assert!(out.text.contains(&format!(
            "image: 127.0.0.1:5000/library/busybox@{}",
            digest('d')
        )));
    }

    #[test]
    fn a_bad_digest_is_reported_not_written() {
        let out = rewrite("l.yaml", fixture("list.yaml"), &|_| {
            Some(Pin {
                digest: "sha256:abc".to_string(),
                registry: None,
            })
        })
        .unwrap();
        assert!(!out.text.contains("sha256:abc"));
        assert_eq!(
            out.changes[1].what,
            "image edge/app:v2 not pinned: \"sha256:abc\" is not a digest"
        );
    }

    #[test]
    fn a_byte_order_mark_and_unicode_before_the_image_are_kept() {
        let text = "\u{feff}# Grüße, 船\napiVersion: v1\nkind: Pod\nmetadata:\n  name: \"ü\"\nspec:\n  containers:\n    - name: 船\n      image: edge/app:v2\n";
        let out = rewrite("bom.yaml", text, &pins).unwrap();
        assert_eq!(
            out.text,
            text.replace(
                "image: edge/app:v2\n",
                &format!(
                    "image: edge/app:v2@{}\n      imagePullPolicy: Never\n",
                    digest('e')
                )
            )
        );
        assert_eq!(out.changes[0].module, "船");
    }

    fn refusal(file: &str, text: &str) -> KubernetesError {
        match rewrite(file, text, &pins) {
            Ok(out) => panic!("{file}: rewritten:\n{}", out.text),
            Err(err) => {
                assert!(err.to_string().starts_with(file), "{err}");
                err
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        let anchored = refusal("alias-image.yaml", &refusing("alias-image.yaml"));
        assert!(
            matches!(
                &anchored,
                KubernetesError::Refused { document: 1, workload, reason: Refusal::Anchor { what }, .. }
                    if workload == "Deployment/aliased" && what == "container app: `image`"
            ),
            "{anchored:?}"
        );
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {image: &img edge/app:v2}\nspec:\n  containers:\n    - name: app\n      image: *img\n";
        let aliased = refusal("alias.yaml", &format!("kind: Service\n---\n{text}"));
        assert!(
            matches!(
                &aliased,
                KubernetesError::Refused {
                    document: 2,
                    reason: Refusal::Alias { .. },
                    ..
                }
            ),
            "{aliased:?}"
        );
        assert_eq!(
            aliased.to_string(),
            "alias.yaml: document 2: Pod/p: container app: `image` is an alias (*); write it out plainly to rewrite it"
        );
        let folded = refusal("multi-line-image.yaml", &refusing("multi-line-image.yaml"));
        assert!(
            matches!(
                &folded,
                KubernetesError::Refused {
                    reason: Refusal::MultiLine { .. },
                    ..
                }
            ),
            "{folded:?}"
        );
        let plain_folded = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: app\n      image: edge/app\n        :v2\n";
        assert!(matches!(
            refusal("folded.yaml", plain_folded),
            KubernetesError::Refused {
                reason: Refusal::MultiLine { .. },
                ..
            }
        ));
        let escaped = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: app\n      image: \"edge/app\\x3av2\"\n";
        assert!(matches!(
            refusal("escaped.yaml", escaped),
            KubernetesError::Refused {
                reason: Refusal::NotVerbatim { .. },
                ..
            }
        ));
        let tagged = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: app\n      image: !!str edge/app:v2\n";
        assert!(matches!(
            refusal("tagged.yaml", tagged),
            KubernetesError::Refused {
                reason: Refusal::NotVerbatim { .. },
                ..
            }
        ));
        let twice = "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: app\n      image: a\n      imagePullPolicy: Always\n      imagePullPolicy: IfNotPresent\n";
        assert!(matches!(
            refusal("twice.yaml", twice),
            KubernetesError::Refused {
                reason: Refusal::DuplicateKey { .. },
                ..
            }
        ));
        let merged = refusal("merge-key.yaml", &refusing("merge-key.yaml"));
        assert!(
            matches!(
                &merged,
                KubernetesError::Refused {
                    reason: Refusal::MergeKey { .. },
                    ..
                }
            ),
            "{merged:?}"
        );
        let template = "kind: Deployment\nmetadata: {name: t}\nspec:\n  template: *tpl\n";
        let template = refusal("template.yaml", &format!("x: &tpl {{}}\n---\n{template}"));
        assert!(
            matches!(&template, KubernetesError::Refused { reason: Refusal::Alias { what }, .. } if what == "`spec.template`"),
            "{template:?}"
        );
    }

    #[test]
    fn refuses_what_is_not_a_workload() {
        let broken = refusal("not-yaml.yaml", &refusing("not-yaml.yaml"));
        assert!(
            matches!(&broken, KubernetesError::Parse { document: 1, .. }),
            "{broken:?}"
        );
        let second = refusal("second.yaml", "kind: Service\n---\nkind: [\n");
        assert!(
            matches!(&second, KubernetesError::Parse { document: 2, .. }),
            "{second:?}"
        );
        let none = refusal("service-only.yaml", &refusing("service-only.yaml"));
        assert!(
            matches!(&none, KubernetesError::NoWorkload { documents: 1, .. }),
            "{none:?}"
        );
        assert!(matches!(
            refusal("empty.yaml", ""),
            KubernetesError::NoWorkload { documents: 0, .. }
        ));
        for (text, needle) in [
            ("kind: Deployment\nmetadata: {name: d}\nspec: {}\n", "`spec.template` is missing"),
            ("kind: Pod\nmetadata: {name: p}\nspec: {}\n", "`spec` has no `containers`"),
            ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n", "container a has no `image`"),
            ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n      image: {{ .Values.image }}\n", "unquoted template"),
            ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: {}\n", "expected a sequence of containers"),
            ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n      image: a\n      imagePullPolicy:\n", "`imagePullPolicy` is empty"),
        ] {
            let err = refusal("invalid.yaml", text);
            assert!(
                matches!(err, KubernetesError::Invalid { .. }) && err.to_string().contains(needle),
                "{text}: {err}"
            );
        }
        let deep = format!("kind: Pod\nx: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            refusal("deep.yaml", &deep),
            KubernetesError::Parse { .. }
        ));
    }

    #[test]
    fn parsing_builds_one_tree_per_document_at_byte_offsets() {
        let body = "a: {b: é}\n---\n- [x, y]\n";
        let (documents, count) = parse("t.yaml", body).unwrap();
        assert_eq!(count, 2);
        let indexes: Vec<usize> = documents.iter().map(|d| d.index).collect();
        assert_eq!(indexes, [1, 2]);
        let root = documents[0].root.as_ref().unwrap();
        assert!(matches!(root.value, Value::Mapping { flow: false, .. }));
        let inner = root.lookup("a").unwrap().unwrap();
        assert!(matches!(inner.value, Value::Mapping { flow: true, .. }));
        assert_eq!(&body[inner.start..inner.end], "{b: é}");
        let b = inner.lookup("b").unwrap().unwrap();
        assert_eq!((b.scalar(), &body[b.start..b.end]), (Some("é"), "é"));
        let Value::Sequence { items } = &documents[1].root.as_ref().unwrap().value else {
            panic!("the second document is a sequence");
        };
        assert!(
            matches!(&items[..], [Node { value: Value::Sequence { items }, .. }] if items.len() == 2)
        );
    }

    #[test]
    fn parsing_refuses_collections_nested_too_deep() {
        let nested = |levels| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(parse("ok.yaml", &nested(MAX_DEPTH)).is_ok());
        let Err(err) = parse("deep.yaml", &nested(MAX_DEPTH + 1)) else {
            panic!("{} levels parsed", MAX_DEPTH + 1);
        };
        assert_eq!(
            err.to_string(),
            "deep.yaml: document 1: not YAML: collections nested deeper than 128 levels"
        );
    }

    #[test]
    fn recognises_kubernetes_yaml_and_json() {
        assert!(looks_like(fixture("multi-document.yaml")));
        assert!(looks_like(fixture("pod.json")));
        assert!(looks_like(&refusing("service-only.yaml")));
        assert!(!looks_like(&refusing("not-yaml.yaml")));
        assert!(!looks_like("{\"modulesContent\": {}}"));
        assert!(!looks_like("just: yaml\n"));
    }
}
