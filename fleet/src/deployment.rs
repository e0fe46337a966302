//! Azure IoT Edge deployment manifests, edited in place.
//!
//! Devices that get their images sideloaded must never be told to pull: if the edge agent tries,
//! it fails on a link that cannot carry an image, or, worse, succeeds over a metered one. So every
//! module in a manifest that goes to such a device needs `"imagePullPolicy": "never"`, and a
//! release pipeline may also pin each image to the digest the device will hold once its bundle
//! is applied, so the agent starts exactly the image that was verified.
//!
//! Manifests are written and reviewed by people (VS Code's `deployment.template.json` has
//! comments, key order means something to its readers, and diffs go through code review), so the
//! rewrite changes the bytes it must and no others. The file is read as a concrete syntax tree
//! ([`CstRootNode`]) that keeps every comment, space and line ending, and each change is worked
//! out from that tree as a splice of the original text: a replaced string literal, or an inserted
//! property written in the style of its neighbours. The CST's own insertion
//! ([`jsonc_parser::cst::CstObject::append`]) is not used, because it also reflows objects written
//! on one line and drops blank lines next to the braces, which would touch bytes the rewrite has
//! no business changing.
//!
//! Three shapes are understood: `{"modulesContent": ...}` (`az iot edge set-modules`),
//! `{"content": {"modulesContent": ...}, "targetCondition": ...}` (`az iot edge deployment
//! create`), and layered deployments, whose `$edgeAgent` holds keys such as
//! `"properties.desired.modules.NAME"` instead of, or beside, `"properties.desired"`.

use jsonc_parser::cst::{CstLeafNode, CstNode, CstObject, CstObjectProp, CstRootNode};
use jsonc_parser::{ParseOptions, ParseStringErrorKind};

use crate::manifest::{pinning, Pin, Pinning};
pub use crate::manifest::{Change, ModuleImage, Rewritten};

/// The key the edge agent reads to decide whether it may pull a module's image.
const POLICY_KEY: &str = "imagePullPolicy";
/// The only policy a sideloaded device may be given.
const NEVER: &str = "never";

/// Why a manifest could not be read or rewritten.
///
/// The two cases call for different fixes (repair the file's syntax, or point the tool at a
/// deployment manifest rather than some other JSON), so they are told apart, and both name the
/// file because a pipeline usually handles several.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// Not JSON (with comments) at all: position/message from the parser.
    #[error("{file}: not a JSON deployment manifest: {message}")]
    Parse {
        /// The file, as the caller named it.
        file: String,
        /// The parser's message, with its position.
        message: String,
    },
    /// JSON, but no `modulesContent.$edgeAgent` with modules (say what was expected).
    #[error("{file}: {problem}")]
    NotADeployment {
        /// The file, as the caller named it.
        file: String,
        /// What was expected and not found.
        problem: ShapeError,
    },
}

/// What is wrong with JSON that is not a deployment manifest: what was found where, and what
/// was expected instead (the shapes `az iot edge` takes), so that a person can fix the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The top level is not an object.
    #[error("the top level is {found}, expected an object with `modulesContent`")]
    TopLevel {
        /// What it is instead (`an array`, `null`, …).
        found: &'static str,
    },
    /// Neither `modulesContent` nor `content` at the top level.
    #[error(
        "no `modulesContent`: expected {{\"modulesContent\": {{\"$edgeAgent\": …}}}} (az iot edge \
         set-modules) or {{\"content\": {{\"modulesContent\": …}}}} (az iot edge deployment create)"
    )]
    NoModulesContent,
    /// A `content` without `modulesContent`.
    #[error(
        "`content` has no `modulesContent`: expected {{\"content\": {{\"modulesContent\": \
         {{\"$edgeAgent\": …}}}}}} as `az iot edge deployment create` takes it"
    )]
    NoModulesContentInContent,
    /// `modulesContent` without `$edgeAgent`.
    #[error(
        "`modulesContent` has no `$edgeAgent`, so it names no modules: expected \
         `$edgeAgent.properties.desired` or layered `$edgeAgent.properties.desired.modules.NAME` keys"
    )]
    NoEdgeAgent,
    /// `$edgeAgent` without a single module.
    #[error(
        "`$edgeAgent` lists no modules: expected `properties.desired.systemModules` / \
         `properties.desired.modules`, or layered `properties.desired.modules.NAME` keys"
    )]
    NoModules,
    /// A value on the way to the modules is not an object.
    #[error("{what} is {found}, expected an object")]
    NotAnObject {
        /// Which value, as a path in backquotes (`` `modulesContent` ``).
        what: String,
        /// What it is instead.
        found: &'static str,
    },
    /// A module's entry is not an object.
    #[error("module `{module}` is {found}, not an object")]
    ModuleNotAnObject {
        /// The module's name.
        module: String,
        /// What it is instead.
        found: &'static str,
    },
    /// A module without `settings.image`.
    #[error("module `{module}` has no `settings.image`; the edge agent could not start it either")]
    NoImage {
        /// The module's name.
        module: String,
    },
    /// A module whose `settings` is not an object.
    #[error("module `{module}`: `settings` is {found}, not an object with `image`")]
    SettingsNotAnObject {
        /// The module's name.
        module: String,
        /// What it is instead.
        found: &'static str,
    },
    /// A module whose `settings.image` is not a string.
    #[error(
        "module `{module}`: `settings.image` is {found}, not a string; the edge agent could not start it either"
    )]
    ImageNotAString {
        /// The module's name.
        module: String,
        /// What it is instead.
        found: &'static str,
    },
    /// A module whose `settings.image` string cannot be decoded (a bad escape).
    #[error("module `{module}`: `settings.image` is not a valid string: {error}")]
    ImageNotDecodable {
        /// The module's name.
        module: String,
        /// The decoder's complaint.
        error: ParseStringErrorKind,
    },
}

/// Parses `text` (named `file` in messages) and lists every module's image, system modules first,
/// then modules in document order.
///
/// This is what a rollout planner needs to know which images must be on a device before the
/// manifest may be released to it. A module without a string `settings.image` is an error: the
/// edge agent could not start it either, and a silent skip would let a broken manifest through.
pub fn images(file: &str, text: &str) -> Result<Vec<ModuleImage>, DeploymentError> {
    let manifest = Manifest::read(file, text)?;
    Ok(manifest
        .modules
        .iter()
        .map(|module| ModuleImage {
            module: module.name.clone(),
            system: module.system,
            image: module.image.clone(),
            pull_policy: module
                .policy
                .as_ref()
                .and_then(|prop| prop.value())
                .map(|value| policy_text(&value)),
            workload: None,
        })
        .collect())
}

/// An image reference split the way the device's registry knows it.
///
/// The device's local registry is addressed as `localhost`, not as the registry the manifest
/// names, so what matters on the device is the repository path without its host; Docker Hub's
/// implicit `library/` is made explicit because that is the name a registry stores it under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageName {
    /// Repository path without the registry host, e.g. `edge/app` or `library/nginx`.
    pub repository: String,
    /// The tag if one is written; no `latest` is made up, so a digest-only reference stays one.
    pub tag: Option<String>,
    /// The digest if one is written, e.g. `sha256:…`.
    pub digest: Option<String>,
}

/// Splits `host/repo/path:tag@sha256:…` into repository (registry host removed: the first path
/// component is a host when it contains '.' or ':' or is "localhost"; Docker Hub's "docker.io/"
/// and "library/" handled as Docker does: "docker.io/library/nginx" -> "library/nginx", plain
/// "nginx" -> "library/nginx"), tag and digest. None for a reference that contains a template
/// variable (`$`), or is empty/malformed.
///
/// A template variable is refused rather than guessed at because its value is only known when
/// the template is expanded; matching it against device inventories would be wrong either way.
pub fn image_name(reference: &str) -> Option<ImageName> {
    if reference.is_empty() || reference.contains('$') {
        return None;
    }
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if digest.is_some_and(|digest| !valid_digest(digest)) {
        return None;
    }
    let last_slash = name_and_tag.rfind('/');
    let (name, tag) = match name_and_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
        }
        _ => (name_and_tag, None),
    };
    if tag.is_some_and(|tag| !valid_tag(tag)) || name.len() > 255 {
        return None;
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let host = match components.as_slice() {
        [first, _, ..] if first.contains('.') || first.contains(':') || *first == "localhost" => {
            Some(components.remove(0))
        }
        _ => None,
    };
    if host.is_some_and(|host| !valid_host(host)) || !components.iter().all(|c| valid_component(c))
    {
        return None;
    }
    let docker_hub = host.is_none_or(|host| host == "docker.io" || host == "index.docker.io");
    let repository = match components.as_slice() {
        [only] if docker_hub => format!("library/{only}"),
        _ => components.join("/"),
    };
    Some(ImageName {
        repository,
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    })
}

/// Sets imagePullPolicy to "never" on every module (edgeAgent and edgeHub included; inserted as
/// the module's last property when absent, matching the surrounding indentation), and, when `pin`
/// returns a digest for an image reference (called with the reference verbatim), rewrites
/// `settings.image` to `NAME:TAG@DIGEST` (an existing `@digest` replaced; no tag: `NAME@DIGEST`;
/// the registry host replaced when the [`Pin`] names a device registry, see
/// [`with_registry`](crate::manifest::with_registry)). References with template variables
/// (`$`, `{{`) are never changed (reported as a Change). Idempotent:
/// rewriting the result again changes nothing and reports no changes. Everything else
/// byte-identical.
///
/// Why in place: the manifest is reviewed as a diff and may carry comments, so the edit must be
/// exactly the policy and the pins. `pin` is not called for a template reference (its value is
/// unknown until the template is expanded) nor for one that is not an image reference at all;
/// both are reported on every run, because the manifest still holds them, and those reports are
/// the only changes a second run can list. A `pin` answer that is not a well-formed digest is
/// reported and not written, so a broken lookup cannot put a reference the agent would reject
/// into the manifest.
pub fn rewrite(
    file: &str,
    text: &str,
    pin: &dyn Fn(&str) -> Option<Pin>,
) -> Result<Rewritten, DeploymentError> {
    let manifest = Manifest::read(file, text)?;
    let mut edits = Vec::new();
    let mut changes = Vec::new();
    let mut change = |module: &Module, what: String| {
        changes.push(Change {
            module: module.name.clone(),
            what,
            workload: None,
        })
    };

    for module in &manifest.modules {
        match module.policy.as_ref().and_then(|prop| prop.value()) {
            Some(value) => {
                let is_never = value
                    .as_string_lit()
                    .and_then(|lit| lit.decoded_value().ok())
                    .as_deref()
                    == Some(NEVER);
                if !is_never {
                    edits.push(Edit::replace(&value, json_string(NEVER)));
                    change(
                        module,
                        format!("{POLICY_KEY} {} -> {NEVER}", policy_text(&value)),
                    );
                }
            }
            None => {
                edits.extend(insert_policy(&module.object));
                change(module, format!("{POLICY_KEY} set to {NEVER}"));
            }
        }

        let image = module.image.as_str();
        match pinning(image, pin) {
            Pinning::Keep => {}
            Pinning::Notice(what) => change(module, what),
            Pinning::Pinned(pinned) => {
                edits.push(Edit::replace(&module.image_node, json_string(&pinned)));
                change(module, format!("image {image} -> {pinned}"));
            }
        }
    }

    Ok(Rewritten {
        text: manifest.apply(edits),
        changes,
    })
}

/// The manifest as read: the tree (kept alive because the nodes below only point up to it) and
/// the modules found in it.
struct Manifest {
    /// Owns the tree; the module nodes hold only weak links to their parents.
    _root: CstRootNode,
    /// The UTF-8 byte order mark that Windows editors write, kept out of the parser (which refuses
    /// it) and put back in front of the output.
    bom: String,
    /// The text after the byte order mark, which all node offsets refer to.
    body: String,
    modules: Vec<Module>,
}

/// One module entry of `$edgeAgent` and the nodes a rewrite touches.
struct Module {
    name: String,
    system: bool,
    /// The module's own object, where a missing policy is inserted.
    object: CstObject,
    /// The `imagePullPolicy` property, if present.
    policy: Option<CstObjectProp>,
    /// The string literal of `settings.image`.
    image_node: CstNode,
    /// Its decoded value.
    image: String,
}

impl Manifest {
    /// Parses `text` (named `file` in messages) and finds its modules.
    fn read(file: &str, text: &str) -> Result<Self, DeploymentError> {
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        let bom = text[..text.len() - body.len()].to_string();
        let root =
            CstRootNode::parse(body, &parse_options()).map_err(|err| DeploymentError::Parse {
                file: file.to_string(),
                message: err.to_string(),
            })?;
        let Some(value) = root.value() else {
            return Err(DeploymentError::Parse {
                file: file.to_string(),
                message: "the file holds no JSON value".to_string(),
            });
        };
        let modules = read_modules(&value).map_err(|problem| DeploymentError::NotADeployment {
            file: file.to_string(),
            problem,
        })?;
        Ok(Manifest {
            _root: root,
            bom,
            body: body.to_string(),
            modules,
        })
    }

    /// Splices `edits` into the original text; they never overlap, since each touches either one
    /// literal or the gap after one module's last property.
    fn apply(&self, mut edits: Vec<Edit>) -> String {
        edits.sort_by_key(|edit| std::cmp::Reverse(edit.start));
        let mut text = self.body.clone();
        for edit in edits {
            text.replace_range(edit.start..edit.end, &edit.text);
        }
        format!("{}{}", self.bom, text)
    }
}

impl Module {
    /// The module `name`, a system module or not, from its entry `prop`.
    fn read(name: &str, system: bool, prop: &CstObjectProp) -> Result<Self, ShapeError> {
        let module = || name.to_string();
        let object = prop
            .object_value()
            .ok_or_else(|| ShapeError::ModuleNotAnObject {
                module: module(),
                found: describe_value(prop),
            })?;
        let no_image = || ShapeError::NoImage { module: module() };
        let settings = object.get("settings").ok_or_else(no_image)?;
        let settings = settings
            .object_value()
            .ok_or_else(|| ShapeError::SettingsNotAnObject {
                module: module(),
                found: describe_value(&settings),
            })?;
        let image_prop = settings.get("image").ok_or_else(no_image)?;
        let image_node = image_prop.value().ok_or_else(no_image)?;
        let image = image_node
            .as_string_lit()
            .ok_or_else(|| ShapeError::ImageNotAString {
                module: module(),
                found: describe(&image_node),
            })?
            .decoded_value()
            .map_err(|error| ShapeError::ImageNotDecodable {
                module: module(),
                error,
            })?;
        Ok(Module {
            name: name.to_string(),
            system,
            policy: object.get(POLICY_KEY),
            object,
            image_node,
            image,
        })
    }
}

/// Every module of the manifest whose top-level value is `value`: system modules first, each
/// group in document order.
fn read_modules(value: &CstNode) -> Result<Vec<Module>, ShapeError> {
    let Some(top) = value.as_object() else {
        return Err(ShapeError::TopLevel {
            found: describe(value),
        });
    };
    let agent = edge_agent(&top)?;
    let mut modules = Vec::new();
    for prop in agent.properties() {
        collect_agent_property(&prop, &mut modules)?;
    }
    if modules.is_empty() {
        return Err(ShapeError::NoModules);
    }
    // Stable: system modules first, each group in document order.
    modules.sort_by_key(|module| !module.system);
    Ok(modules)
}

/// The `$edgeAgent` object of `{"modulesContent": …}` or `{"content": {"modulesContent": …}}`.
fn edge_agent(top: &CstObject) -> Result<CstObject, ShapeError> {
    let modules_content = match (top.get("modulesContent"), top.get("content")) {
        (Some(prop), _) => object_of(&prop, "`modulesContent`")?,
        (None, Some(content)) => {
            let content = object_of(&content, "`content`")?;
            let prop = content
                .get("modulesContent")
                .ok_or(ShapeError::NoModulesContentInContent)?;
            object_of(&prop, "`content.modulesContent`")?
        }
        (None, None) => return Err(ShapeError::NoModulesContent),
    };
    let agent = modules_content
        .get("$edgeAgent")
        .ok_or(ShapeError::NoEdgeAgent)?;
    object_of(&agent, "`$edgeAgent`")
}

/// What a property of `$edgeAgent` holds, by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentKey<'a> {
    /// `properties.desired`: its `systemModules` and `modules` sections, if present.
    Desired,
    /// `properties.desired.systemModules` or `properties.desired.modules`, layered: one section.
    Section {
        /// `systemModules`.
        system: bool,
    },
    /// `properties.desired.systemModules.NAME` or `properties.desired.modules.NAME`, layered:
    /// one module.
    Module {
        /// The module's name (the rest of the key, dots and all).
        name: &'a str,
        /// Under `systemModules`.
        system: bool,
    },
    /// Anything else: another desired property, such as the runtime settings, or not a desired
    /// property at all. It holds no modules.
    Other,
}

impl<'a> AgentKey<'a> {
    /// Decides by the key alone.
    fn of(key: &'a str) -> Self {
        let Some(path) = key.strip_prefix("properties.desired") else {
            return AgentKey::Other;
        };
        if path.is_empty() {
            return AgentKey::Desired;
        }
        let Some(rest) = path.strip_prefix('.') else {
            return AgentKey::Other;
        };
        match rest.split_once('.') {
            None if rest == "systemModules" || rest == "modules" => AgentKey::Section {
                system: rest == "systemModules",
            },
            Some(("systemModules", name)) => AgentKey::Module { name, system: true },
            Some(("modules", name)) => AgentKey::Module {
                name,
                system: false,
            },
            _ => AgentKey::Other,
        }
    }
}

/// Reads the modules that one property of `$edgeAgent` holds (see [`AgentKey`]) into `modules`.
fn collect_agent_property(
    prop: &CstObjectProp,
    modules: &mut Vec<Module>,
) -> Result<(), ShapeError> {
    let Some(key) = prop.decoded_name() else {
        return Ok(());
    };
    let where_ = || format!("`$edgeAgent.{key}`");
    match AgentKey::of(&key) {
        AgentKey::Desired => {
            let desired = object_of(prop, &where_())?;
            for (section, system) in [("systemModules", true), ("modules", false)] {
                if let Some(section_prop) = desired.get(section) {
                    let where_ = format!("`$edgeAgent.properties.desired.{section}`");
                    collect_section(&section_prop, &where_, system, modules)?;
                }
            }
        }
        AgentKey::Section { system } => collect_section(prop, &where_(), system, modules)?,
        AgentKey::Module { name, system } => modules.push(Module::read(name, system, prop)?),
        AgentKey::Other => {}
    }
    Ok(())
}

/// Reads every module of a `systemModules` or `modules` object.
fn collect_section(
    prop: &CstObjectProp,
    where_: &str,
    system: bool,
    modules: &mut Vec<Module>,
) -> Result<(), ShapeError> {
    for module in object_of(prop, where_)?.properties() {
        let Some(name) = module.decoded_name() else {
            continue;
        };
        modules.push(Module::read(&name, system, &module)?);
    }
    Ok(())
}

/// The object that `prop` (called `what` in messages) holds.
fn object_of(prop: &CstObjectProp, what: &str) -> Result<CstObject, ShapeError> {
    prop.object_value().ok_or_else(|| ShapeError::NotAnObject {
        what: what.to_string(),
        found: describe_value(prop),
    })
}

fn describe_value(prop: &CstObjectProp) -> &'static str {
    prop.value().as_ref().map_or("missing", describe)
}

/// The kind of a JSON value, for messages that say what was found instead of what was expected.
fn describe(node: &CstNode) -> &'static str {
    if node.as_object().is_some() {
        "an object"
    } else if node.as_array().is_some() {
        "an array"
    } else if node.as_string_lit().is_some() {
        "a string"
    } else if node.as_number_lit().is_some() {
        "a number"
    } else if node.as_boolean_lit().is_some() {
        "a boolean"
    } else if node.as_null_keyword().is_some() {
        "null"
    } else {
        "not a JSON value"
    }
}

/// A policy value as a report shows it: a string's value, anything else as written.
fn policy_text(value: &CstNode) -> String {
    value
        .as_string_lit()
        .and_then(|lit| lit.decoded_value().ok())
        .unwrap_or_else(|| value.to_string())
}

/// JSON with comments and trailing commas, as VS Code writes and IoT Hub's tooling reads it, and
/// none of the JSON5 liberties (single quotes, bare keys, missing commas): a manifest that only a
/// JSON5 parser reads would be refused by IoT Hub, so it is better refused here.
fn parse_options() -> ParseOptions {
    ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    }
}

fn json_string(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

/// Replace `start..end` of the original text (after any byte order mark) by `text`.
struct Edit {
    start: usize,
    end: usize,
    text: String,
}

impl Edit {
    fn replace(node: &CstNode, text: String) -> Self {
        let start = offset(node);
        Edit {
            start,
            end: start + node.to_string().len(),
            text,
        }
    }

    fn insert_after(node: &CstNode, text: String) -> Self {
        let at = offset(node) + node.to_string().len();
        Edit {
            start: at,
            end: at,
            text,
        }
    }
}

/// Byte offset of `node` in the text the tree was parsed from: the tree keeps every byte, so this
/// is the length of everything printed before it.
fn offset(node: &CstNode) -> usize {
    let mut offset = 0;
    let mut current = node.clone();
    loop {
        offset += current
            .previous_siblings()
            .map(|sibling| sibling.to_string().len())
            .sum::<usize>();
        match current.parent() {
            Some(parent) => current = CstNode::Container(parent),
            None => return offset,
        }
    }
}

/// The edits that add `"imagePullPolicy": "never"` as the last property of `object`, in the style
/// of the properties already there.
///
/// In an object written over several lines the new property gets a line of its own after the last
/// one, with that line's indentation and line ending, after any comment that ends the last line;
/// the comma it needs goes straight after the last property, where a reader expects it. In an
/// object written on one line it follows the last property on that line, separated as the others
/// are. A trailing comma after the last property is kept after the new one.
fn insert_policy(object: &CstObject) -> Vec<Edit> {
    let children = object.children();
    let properties = object.properties();
    let Some(last) = properties.last() else {
        // Unreachable for a module (it has `settings`), but an empty object still gets its policy.
        let open = children
            .first()
            .cloned()
            .expect("an object starts with its brace");
        return vec![Edit::insert_after(
            &open,
            format!("{}: {}", json_string(POLICY_KEY), json_string(NEVER)),
        )];
    };
    let last_index = last.child_index();
    let last_node: CstNode = last.clone().into();

    // What follows the last property on its line: its comma, and comments that end the line.
    let mut comma = None;
    let mut line_end = last_index;
    for (index, child) in children.iter().enumerate().skip(last_index + 1) {
        match child {
            CstNode::Leaf(CstLeafNode::Whitespace(_)) => {}
            CstNode::Leaf(CstLeafNode::Comment(_)) => line_end = index,
            CstNode::Leaf(CstLeafNode::Token(token)) if token.value() == ',' && comma.is_none() => {
                comma = Some(index);
                line_end = index;
            }
            _ => break,
        }
    }

    let property = format!(
        "{}{}{}",
        json_string(POLICY_KEY),
        separator(last),
        json_string(NEVER)
    );
    let trailing_comma = if comma.is_some() { "," } else { "" };

    // The indentation of the last property that starts a line, if any does.
    let line_start = properties
        .iter()
        .rev()
        .find_map(|prop| line_start(&children, prop.child_index()));
    match line_start {
        Some((newline, indent)) => {
            let line = format!("{newline}{indent}{property}{trailing_comma}");
            match comma {
                None if line_end == last_index => {
                    vec![Edit::insert_after(&last_node, format!(",{line}"))]
                }
                None => vec![
                    Edit::insert_after(&last_node, ",".to_string()),
                    Edit::insert_after(&children[line_end], line),
                ],
                Some(_) => vec![Edit::insert_after(&children[line_end], line)],
            }
        }
        None => {
            let space = inline_space(&children);
            match comma {
                None => vec![Edit::insert_after(
                    &last_node,
                    format!(",{space}{property}"),
                )],
                Some(comma) => vec![Edit::insert_after(
                    &children[comma],
                    format!("{space}{property},"),
                )],
            }
        }
    }
}

/// When the property at `children[index]` starts its line (only spaces or block comments before
/// it), the line ending before it and the line's indentation.
fn line_start(children: &[CstNode], index: usize) -> Option<(String, String)> {
    for i in (0..index).rev() {
        match &children[i] {
            CstNode::Leaf(CstLeafNode::Newline(newline)) => {
                let indent = match children.get(i + 1) {
                    Some(CstNode::Leaf(CstLeafNode::Whitespace(space))) => space.value(),
                    _ => String::new(),
                };
                return Some((newline.to_string(), indent));
            }
            CstNode::Leaf(CstLeafNode::Whitespace(_)) => {}
            CstNode::Leaf(CstLeafNode::Comment(comment)) if !comment.is_line_comment() => {}
            _ => return None,
        }
    }
    None
}

/// How an object on one line separates its properties: the space after a comma between two of
/// them, else the space inside its opening brace.
fn inline_space(children: &[CstNode]) -> String {
    let space_after = |index: usize| match children.get(index + 1) {
        Some(CstNode::Leaf(CstLeafNode::Whitespace(space))) => space.value(),
        _ => String::new(),
    };
    let between = children.iter().enumerate().find(|(index, child)| {
        matches!(child, CstNode::Leaf(CstLeafNode::Token(token)) if token.value() == ',')
            && children[index + 1..]
                .iter()
                .any(|next| next.as_object_prop().is_some())
    });
    match between {
        Some((index, _)) => space_after(index),
        None => space_after(0),
    }
}

/// The text between a property's name and its value (`": "`, `":"`, `" : "`), so an inserted
/// property is spelled like its neighbour; `": "` when comments make that text unusable.
fn separator(prop: &CstObjectProp) -> String {
    let mut text = String::new();
    for child in prop.children().iter().skip(1) {
        match child {
            CstNode::Leaf(CstLeafNode::Whitespace(space)) => text.push_str(&space.value()),
            CstNode::Leaf(CstLeafNode::Token(token)) if token.value() == ':' => text.push(':'),
            _ => break,
        }
    }
    if text.matches(':').count() == 1 {
        text
    } else {
        ": ".to_string()
    }
}

/// `algorithm:encoded` as the OCI image spec defines a digest, with the registered algorithms'
/// lengths checked, since a digest the registry cannot parse would stop the agent.
pub(crate) fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    let hex = |len: usize| {
        encoded.len() == len
            && encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    algorithm_ok
        && match algorithm {
            "sha256" => hex(64),
            "sha512" => hex(128),
            _ => {
                !encoded.is_empty()
                    && encoded
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
            }
        }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, the distribution spec's tag.
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    tag.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A repository path component: lowercase letters and digits, separated by `.`, `_`, `__` or a
/// run of `-`.
fn valid_component(component: &str) -> bool {
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alphanumeric(&bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let separator_start = i;
        while i < bytes.len() && !alphanumeric(&bytes[i]) {
            i += 1;
        }
        let separator = &component[separator_start..i];
        if !(separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-'))
        {
            return false;
        }
    }
}

/// `host[:port]`, where host is DNS labels or a bracketed IPv6 address.
pub(crate) fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        if address.is_empty()
            || !address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    });
    let name_ok = name.is_none_or(|name| {
        name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    });
    port_ok && name_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    const SET_MODULES: &str = include_str!("../tests/data/deployments/set-modules.json");
    const TEMPLATE: &str = include_str!("../tests/data/deployments/deployment.template.json");
    const CREATE: &str = include_str!("../tests/data/deployments/deployment-create.json");
    const LAYERED: &str = include_str!("../tests/data/deployments/layered.json");
    const CRLF_TABS: &str = include_str!("../tests/data/deployments/crlf-tabs.json");

    const FIXTURES: [(&str, &str); 5] = [
        ("set-modules.json", SET_MODULES),
        ("deployment.template.json", TEMPLATE),
        ("deployment-create.json", CREATE),
        ("layered.json", LAYERED),
        ("crlf-tabs.json", CRLF_TABS),
    ];

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn pinned_to(digest: String) -> Pin {
        Pin {
            digest,
            registry: None,
        }
    }

    /// A pin lookup keyed by the reference without any digest, recording what it was asked, so a
    /// second run finds the same digest for the pinned reference (the idempotence case).
    struct Pins {
        digests: BTreeMap<String, String>,
        asked: RefCell<Vec<String>>,
    }

    impl Pins {
        fn new(entries: &[(&str, char)]) -> Self {
            Pins {
                digests: entries
                    .iter()
                    .map(|(name, c)| (name.to_string(), digest(*c)))
                    .collect(),
                asked: RefCell::new(Vec::new()),
            }
        }

        fn pin(&self, reference: &str) -> Option<Pin> {
            self.asked.borrow_mut().push(reference.to_string());
            let name = reference
                .split_once('@')
                .map_or(reference, |(name, _)| name);
            self.digests.get(name).cloned().map(pinned_to)
        }
    }

    fn no_pins(_: &str) -> Option<Pin> {
        None
    }

    fn image(module: &str, system: bool, image: &str, pull_policy: Option<&str>) -> ModuleImage {
        ModuleImage {
            module: module.to_string(),
            system,
            image: image.to_string(),
            pull_policy: pull_policy.map(str::to_string),
            workload: None,
        }
    }

    fn change(module: &str, what: &str) -> Change {
        Change {
            module: module.to_string(),
            what: what.to_string(),
            workload: None,
        }
    }

    /// The byte-level differences between `before` and `after`, as (removed, inserted) pairs in
    /// document order.
    ///
    /// Edits here are small and far apart, so after a mismatch the nearest point where the two
    /// texts agree again is where the edit stops; "agree" means for at least 24 bytes holding at
    /// least 8 that are not whitespace (an indentation run alone is no evidence), or up to their
    /// common end. An insertion found after a run of whitespace it shares with the text is slid
    /// back over that run, so it reads as written (`\n    "key": …` rather than a rotation).
    fn hunks(before: &str, after: &str) -> Vec<(String, String)> {
        let agree = |rest_a: &[u8], rest_b: &[u8]| {
            let mut needed = rest_a.len();
            let mut solid = 0;
            for (n, byte) in rest_a.iter().enumerate() {
                solid += usize::from(!byte.is_ascii_whitespace());
                if n + 1 >= 24 && solid >= 8 {
                    needed = n + 1;
                    break;
                }
            }
            if needed == rest_a.len() {
                rest_a == rest_b
            } else {
                rest_b.len() >= needed && rest_a[..needed] == rest_b[..needed]
            }
        };
        let (a, b) = (before.as_bytes(), after.as_bytes());
        let (mut i, mut j) = (0, 0);
        let mut last_end = 0;
        let mut found = Vec::new();
        while i < a.len() || j < b.len() {
            if i < a.len() && j < b.len() && a[i] == b[j] {
                i += 1;
                j += 1;
                continue;
            }
            let (skip_a, skip_b) = (1..=(a.len() - i) + (b.len() - j))
                .flat_map(|total| (0..=total).map(move |skip_a| (skip_a, total - skip_a)))
                .find(|&(skip_a, skip_b)| {
                    i + skip_a <= a.len()
                        && j + skip_b <= b.len()
                        && agree(&a[i + skip_a..], &b[j + skip_b..])
                })
                .expect("the texts agree again at their ends");
            let (mut start_a, mut start_b) = (i, j);
            if skip_a == 0 {
                while start_a > last_end
                    && a[start_a - 1].is_ascii_whitespace()
                    && a[start_a - 1] == b[start_b + skip_b - 1]
                {
                    start_a -= 1;
                    start_b -= 1;
                }
            }
            found.push((
                String::from_utf8_lossy(&a[start_a..start_a + skip_a]).into_owned(),
                String::from_utf8_lossy(&b[start_b..start_b + skip_b]).into_owned(),
            ));
            i += skip_a;
            j += skip_b;
            last_end = i;
        }
        found
    }

    fn inserted(text: &str) -> (String, String) {
        (String::new(), text.to_string())
    }

    fn replaced(old: &str, new: &str) -> (String, String) {
        (old.to_string(), new.to_string())
    }

    fn policy_line(newline: &str, indent: &str) -> String {
        format!(",{newline}{indent}\"imagePullPolicy\": \"never\"")
    }

    /// Rewrites again and checks nothing moves and only the standing notices come back.
    fn assert_idempotent(file: &str, first: &Rewritten, pin: &dyn Fn(&str) -> Option<Pin>) {
        let again = rewrite(file, &first.text, pin).unwrap();
        assert_eq!(
            again.text, first.text,
            "{file}: a second rewrite changed the text"
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
        for module in images(file, &first.text).unwrap() {
            assert_eq!(
                module.pull_policy.as_deref(),
                Some("never"),
                "{file}: {}",
                module.module
            );
        }
    }

    #[test]
    fn fixtures_parse_and_keep_their_line_endings() {
        for (file, text) in FIXTURES {
            assert!(!images(file, text).unwrap().is_empty(), "{file}");
        }
        // A checkout that normalised line endings would make the CRLF tests prove nothing.
        assert!(CRLF_TABS.contains("\r\n\t\t"));
        assert!(!CRLF_TABS.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn images_of_set_modules_manifest() {
        assert_eq!(
            images("set-modules.json", SET_MODULES).unwrap(),
            vec![
                image(
                    "edgeAgent",
                    true,
                    "mcr.microsoft.com/azureiotedge-agent:1.5",
                    None
                ),
                image(
                    "edgeHub",
                    true,
                    "mcr.microsoft.com/azureiotedge-hub:1.5",
                    None
                ),
                image(
                    "SimulatedTemperatureSensor",
                    false,
                    "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5",
                    Some("on-create")
                ),
                image(
                    "filter",
                    false,
                    "shipregistry.azurecr.io/edge/filter:2.3.1",
                    None
                ),
            ]
        );
    }

    #[test]
    fn images_of_template_keep_template_variables() {
        assert_eq!(
            images("deployment.template.json", TEMPLATE).unwrap(),
            vec![
                image(
                    "edgeAgent",
                    true,
                    "mcr.microsoft.com/azureiotedge-agent:1.5",
                    None
                ),
                image(
                    "edgeHub",
                    true,
                    "mcr.microsoft.com/azureiotedge-hub:1.5",
                    None
                ),
                image("SampleModule", false, "${MODULES.SampleModule}", None),
                image(
                    "SimulatedTemperatureSensor",
                    false,
                    "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5",
                    None
                ),
                image(
                    "uploader",
                    false,
                    "$CONTAINER_REGISTRY_ADDRESS/edge/uploader:1.0",
                    Some("on-create")
                ),
            ]
        );
    }

    #[test]
    fn images_of_deployment_create_manifest() {
        let telemetry = format!("localhost:5000/edge/telemetry:2.3@{}", digest('0'));
        assert_eq!(
            images("deployment-create.json", CREATE).unwrap(),
            vec![
                image(
                    "edgeAgent",
                    true,
                    "mcr.microsoft.com/azureiotedge-agent:1.5.3",
                    Some("never")
                ),
                image(
                    "edgeHub",
                    true,
                    "mcr.microsoft.com/azureiotedge-hub:1.5.3",
                    None
                ),
                image("telemetry", false, &telemetry, None),
                image("nginx", false, "nginx:1.27-alpine", None),
            ]
        );
    }

    #[test]
    fn images_of_layered_deployment() {
        let vibration = format!("shipregistry.azurecr.io/edge/vibration@{}", digest('1'));
        assert_eq!(
            images("layered.json", LAYERED).unwrap(),
            vec![
                image(
                    "SimulatedTemperatureSensor",
                    false,
                    "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5",
                    None
                ),
                image("vibration", false, &vibration, Some("on-create")),
            ]
        );
    }

    #[test]
    fn images_of_crlf_manifest() {
        assert_eq!(
            images("crlf-tabs.json", CRLF_TABS).unwrap(),
            vec![
                image(
                    "edgeAgent",
                    true,
                    "mcr.microsoft.com/azureiotedge-agent:1.4",
                    None
                ),
                image(
                    "edgeHub",
                    true,
                    "mcr.microsoft.com/azureiotedge-hub:1.4",
                    Some("on-create")
                ),
                image("canbus", false, "docker.io/truckco/canbus:1.0", None),
            ]
        );
    }

    #[test]
    fn rewrite_set_modules_changes_only_policies_and_known_pins() {
        let pins = Pins::new(&[
            ("mcr.microsoft.com/azureiotedge-hub:1.5", 'b'),
            ("shipregistry.azurecr.io/edge/filter:2.3.1", 'a'),
        ]);
        let pin = |reference: &str| pins.pin(reference);
        let out = rewrite("set-modules.json", SET_MODULES, &pin).unwrap();
        let indent = " ".repeat(12);
        assert_eq!(
            hunks(SET_MODULES, &out.text),
            vec![
                inserted(&policy_line("\n", &indent)), // edgeAgent, after "env"
                inserted(&format!("@{}", digest('b'))),
                inserted(&policy_line("\n", &indent)), // edgeHub, after "settings"
                replaced("on-create", "never"),
                inserted(&format!("@{}", digest('a'))),
                inserted(&policy_line("\n", &indent)), // filter, after "env"
            ]
        );
        assert_eq!(
            out.changes,
            vec![
                change("edgeAgent", "imagePullPolicy set to never"),
                change("edgeHub", "imagePullPolicy set to never"),
                change(
                    "edgeHub",
                    &format!(
                        "image mcr.microsoft.com/azureiotedge-hub:1.5 -> mcr.microsoft.com/azureiotedge-hub:1.5@{}",
                        digest('b')
                    )
                ),
                change("SimulatedTemperatureSensor", "imagePullPolicy on-create -> never"),
                change("filter", "imagePullPolicy set to never"),
                change(
                    "filter",
                    &format!(
                        "image shipregistry.azurecr.io/edge/filter:2.3.1 -> shipregistry.azurecr.io/edge/filter:2.3.1@{}",
                        digest('a')
                    )
                ),
            ]
        );
        // `pin` saw every reference verbatim, once, in module order.
        assert_eq!(
            *pins.asked.borrow(),
            vec![
                "mcr.microsoft.com/azureiotedge-agent:1.5",
                "mcr.microsoft.com/azureiotedge-hub:1.5",
                "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5",
                "shipregistry.azurecr.io/edge/filter:2.3.1",
            ]
        );
        // The inserted property really is the module's last, in valid JSON.
        let value: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        let agent = &value["modulesContent"]["$edgeAgent"]["properties.desired"];
        assert_eq!(
            agent["systemModules"]["edgeAgent"]["imagePullPolicy"],
            "never"
        );
        assert_eq!(
            agent["modules"]["filter"]["settings"]["image"],
            format!("shipregistry.azurecr.io/edge/filter:2.3.1@{}", digest('a'))
        );
        assert!(out.text.contains(
            "\"filterToIoTHub\": \"FROM /messages/modules/filter/outputs/* INTO $upstream\""
        ));
        assert_idempotent("set-modules.json", &out, &pin);
    }

    #[test]
    fn rewrite_template_keeps_comments_and_template_references() {
        // A pin that knows every reference: templates must still be left alone, and not even asked.
        let asked = RefCell::new(Vec::new());
        let pin = |reference: &str| {
            asked.borrow_mut().push(reference.to_string());
            Some(pinned_to(digest('c')))
        };
        let out = rewrite("deployment.template.json", TEMPLATE, &pin).unwrap();
        let indent = " ".repeat(12);
        let agent = "mcr.microsoft.com/azureiotedge-agent:1.5";
        let hub = "mcr.microsoft.com/azureiotedge-hub:1.5";
        let sensor = "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5";
        assert_eq!(
            hunks(TEMPLATE, &out.text),
            vec![
                inserted(&format!("@{}", digest('c'))),
                inserted(&policy_line("\n", &indent)),
                inserted(&format!("@{}", digest('c'))),
                inserted(&policy_line("\n", &indent)),
                inserted(&policy_line("\n", &indent)), // SampleModule: no pin
                inserted(&format!("@{}", digest('c'))),
                // The comma goes after `"startupOrder": 1`, the new line after its comment.
                inserted(","),
                inserted(&format!("\n{indent}\"imagePullPolicy\": \"never\"")),
                replaced("on-create", "never"),
            ]
        );
        assert!(out.text.contains(
            "            \"startupOrder\": 1, // after edgeHub\n            \"imagePullPolicy\": \"never\"\n          },"
        ));
        assert!(out.text.contains(
            "\"imagePullPolicy\": \"never\", // TODO: \"never\" once the ship has sideload"
        ));
        assert_eq!(*asked.borrow(), vec![agent, hub, sensor]);
        let pinned = |name: &str| format!("image {name} -> {name}@{}", digest('c'));
        assert_eq!(
            out.changes,
            vec![
                change("edgeAgent", "imagePullPolicy set to never"),
                change("edgeAgent", &pinned(agent)),
                change("edgeHub", "imagePullPolicy set to never"),
                change("edgeHub", &pinned(hub)),
                change("SampleModule", "imagePullPolicy set to never"),
                change("SampleModule", "image ${MODULES.SampleModule} not pinned: template variable"),
                change("SimulatedTemperatureSensor", "imagePullPolicy set to never"),
                change("SimulatedTemperatureSensor", &pinned(sensor)),
                change("uploader", "imagePullPolicy on-create -> never"),
                change(
                    "uploader",
                    "image $CONTAINER_REGISTRY_ADDRESS/edge/uploader:1.0 not pinned: template variable"
                ),
            ]
        );
        assert_idempotent("deployment.template.json", &out, &pin);
    }

    #[test]
    fn rewrite_deployment_create_keeps_top_level_and_one_line_modules() {
        let pins = Pins::new(&[
            ("localhost:5000/edge/telemetry:2.3", '2'),
            ("nginx:1.27-alpine", '3'),
        ]);
        let pin = |reference: &str| pins.pin(reference);
        let out = rewrite("deployment-create.json", CREATE, &pin).unwrap();
        assert_eq!(
            hunks(CREATE, &out.text),
            vec![
                inserted(&policy_line("\n", &" ".repeat(28))), // edgeHub
                replaced(&"0".repeat(64), &"2".repeat(64)),    // telemetry: digest replaced
                inserted(", \"imagePullPolicy\": \"never\""),  // telemetry is written on one line
                inserted(&format!("@{}", digest('3'))),
                inserted(&policy_line("\n", &" ".repeat(28))), // nginx
            ]
        );
        assert_eq!(
            out.changes,
            vec![
                change("edgeHub", "imagePullPolicy set to never"),
                change("telemetry", "imagePullPolicy set to never"),
                change(
                    "telemetry",
                    &format!(
                        "image localhost:5000/edge/telemetry:2.3@{} -> localhost:5000/edge/telemetry:2.3@{}",
                        digest('0'),
                        digest('2')
                    )
                ),
                change("nginx", "imagePullPolicy set to never"),
                change("nginx", &format!("image nginx:1.27-alpine -> nginx:1.27-alpine@{}", digest('3'))),
            ]
        );
        let value: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        assert_eq!(value["priority"], 10);
        assert_eq!(
            value["targetCondition"],
            "tags.fleet='ships' AND tags.sideload=true"
        );
        assert_idempotent("deployment-create.json", &out, &pin);
    }

    #[test]
    fn rewrite_layered_deployment_keeps_blank_line_before_brace() {
        let pins = Pins::new(&[("shipregistry.azurecr.io/edge/vibration", '4')]);
        let pin = |reference: &str| pins.pin(reference);
        let out = rewrite("layered.json", LAYERED, &pin).unwrap();
        assert_eq!(
            hunks(LAYERED, &out.text),
            vec![
                inserted(&policy_line("\n", &" ".repeat(10))),
                replaced(&"1".repeat(64), &"4".repeat(64)),
                replaced("on-create", "never"),
            ]
        );
        assert!(out.text.contains(
            "\"version\": \"1.5\",\n          \"imagePullPolicy\": \"never\"\n\n        },"
        ));
        assert_eq!(
            out.changes,
            vec![
                change("SimulatedTemperatureSensor", "imagePullPolicy set to never"),
                change("vibration", "imagePullPolicy on-create -> never"),
                change(
                    "vibration",
                    &format!(
                        "image shipregistry.azurecr.io/edge/vibration@{} -> shipregistry.azurecr.io/edge/vibration@{}",
                        digest('1'),
                        digest('4')
                    )
                ),
            ]
        );
        assert_idempotent("layered.json", &out, &pin);
    }

    #[test]
    fn rewrite_crlf_tabs_manifest_writes_crlf_and_tabs() {
        let out = rewrite("crlf-tabs.json", CRLF_TABS, &no_pins).unwrap();
        let indent = "\t".repeat(6);
        assert_eq!(
            hunks(CRLF_TABS, &out.text),
            vec![
                inserted(&policy_line("\r\n", &indent)),
                replaced("on-create", "never"),
                inserted(&policy_line("\r\n", &indent)),
            ]
        );
        assert!(
            !out.text.replace("\r\n", "").contains('\n'),
            "a bare LF was written"
        );
        assert_eq!(
            out.changes,
            vec![
                change("edgeAgent", "imagePullPolicy set to never"),
                change("edgeHub", "imagePullPolicy on-create -> never"),
                change("canbus", "imagePullPolicy set to never"),
            ]
        );
        assert_idempotent("crlf-tabs.json", &out, &no_pins);
    }

    fn manifest_with_module(module: &str) -> String {
        format!("{{\"modulesContent\": {{\"$edgeAgent\": {{\"properties.desired\": {{\"modules\": {{\"m\": {module}}}}}}}}}}}")
    }

    #[test]
    fn rewrite_minified_manifest_stays_on_one_line() {
        let text = manifest_with_module(
            r#"{"type":"docker","settings":{"image":"edge/app:v2","createOptions":"{}"}}"#,
        )
        .replace(": ", ":");
        let out = rewrite("min.json", &text, &|_| Some(pinned_to(digest('5')))).unwrap();
        let expected = manifest_with_module(&format!(
            r#"{{"type":"docker","settings":{{"image":"edge/app:v2@{}","createOptions":"{{}}"}},"imagePullPolicy":"never"}}"#,
            digest('5')
        ))
        .replace(": ", ":");
        assert_eq!(out.text, expected);
    }

    #[test]
    fn rewrite_keeps_trailing_commas_comments_and_bom() {
        let text = "\u{feff}{\n  \"modulesContent\": {\n    \"$edgeAgent\": {\n      \"properties.desired.modules.m\": {\n        \"settings\": { \"image\": \"edge/app:v2\" },\n        \"type\": \"docker\", /* last */\n      },\n    },\n  },\n}\n";
        let out = rewrite("trailing.json", text, &no_pins).unwrap();
        assert_eq!(
            out.text,
            text.replace(
                "/* last */\n",
                "/* last */\n        \"imagePullPolicy\": \"never\",\n"
            )
        );
        assert!(out.text.starts_with('\u{feff}'));
    }

    #[test]
    fn rewrite_replaces_a_policy_that_is_not_a_string() {
        let text = manifest_with_module(
            r#"{"imagePullPolicy": null, "settings": {"image": "edge/app:v2"}}"#,
        );
        let out = rewrite("null.json", &text, &no_pins).unwrap();
        assert_eq!(out.text, text.replace("null", "\"never\""));
        assert_eq!(
            out.changes,
            vec![change("m", "imagePullPolicy null -> never")]
        );
    }

    #[test]
    fn rewrite_refuses_bad_pins_and_bad_references() {
        let text = manifest_with_module(
            r#"{"imagePullPolicy": "never", "settings": {"image": "edge/app:v2"}}"#,
        );
        let out = rewrite("pin.json", &text, &|_| {
            Some(pinned_to("sha256:abc".to_string()))
        })
        .unwrap();
        assert_eq!(out.text, text);
        assert_eq!(
            out.changes,
            vec![change(
                "m",
                "image edge/app:v2 not pinned: \"sha256:abc\" is not a digest"
            )]
        );

        let text = manifest_with_module(
            r#"{"imagePullPolicy": "never", "settings": {"image": "Edge/App"}}"#,
        );
        let out = rewrite("ref.json", &text, &|_| {
            panic!("pin asked about a malformed reference")
        })
        .unwrap();
        assert_eq!(out.text, text);
        assert_eq!(
            out.changes,
            vec![change(
                "m",
                "image \"Edge/App\" not pinned: not an image reference"
            )]
        );
    }

    #[test]
    fn rewrite_untagged_reference_pins_name_at_digest() {
        let text = manifest_with_module(
            r#"{"imagePullPolicy": "never", "settings": {"image": "localhost:5000/edge/app"}}"#,
        );
        let out = rewrite("untagged.json", &text, &|_| Some(pinned_to(digest('6')))).unwrap();
        assert_eq!(
            out.text,
            text.replace(
                "localhost:5000/edge/app",
                &format!("localhost:5000/edge/app@{}", digest('6'))
            )
        );
    }

    fn expect_not_a_deployment(text: &str, needle: &str) {
        match images("bad.json", text) {
            Err(err @ DeploymentError::NotADeployment { .. }) => {
                let message = err.to_string();
                assert!(message.starts_with("bad.json: "), "{message}");
                assert!(
                    message.contains(needle),
                    "{message:?} should mention {needle:?}"
                );
            }
            other => panic!("{text}: expected NotADeployment, got {other:?}"),
        }
        assert!(matches!(
            rewrite("bad.json", text, &no_pins),
            Err(DeploymentError::NotADeployment { .. })
        ));
    }

    #[test]
    fn errors_for_text_that_is_not_json() {
        for text in [
            "",
            "not json",
            "{\"modulesContent\": }",
            "{'modulesContent': {}}",
            "{} {}",
            "\u{feff}",
        ] {
            match rewrite("broken.json", text, &no_pins) {
                Err(err @ DeploymentError::Parse { .. }) => {
                    assert!(
                        err.to_string()
                            .starts_with("broken.json: not a JSON deployment manifest: "),
                        "{err}"
                    );
                }
                other => panic!("{text:?}: expected Parse, got {other:?}"),
            }
        }
        let Err(err) = images("broken.json", "{\n  \"a\": 1,\n  \"b\" 2\n}") else {
            panic!()
        };
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn errors_for_json_that_is_not_a_deployment() {
        expect_not_a_deployment("[1, 2]", "the top level is an array");
        expect_not_a_deployment(r#"{"name": "package.json, really"}"#, "no `modulesContent`");
        expect_not_a_deployment(
            r#"{"content": {"deviceContent": {}}}"#,
            "`content` has no `modulesContent`",
        );
        expect_not_a_deployment(r#"{"modulesContent": []}"#, "`modulesContent` is an array");
        expect_not_a_deployment(r#"{"modulesContent": {"$edgeHub": {}}}"#, "no `$edgeAgent`");
        expect_not_a_deployment(
            r#"{"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}}}}"#,
            "lists no modules",
        );
        expect_not_a_deployment(
            r#"{"modulesContent": {"$edgeAgent": {"properties.desired": {"modules": "none"}}}}"#,
            "`$edgeAgent.properties.desired.modules` is a string",
        );
    }

    #[test]
    fn what_is_wrong_is_a_typed_problem() {
        let problem = |text: &str| match images("bad.json", text) {
            Err(DeploymentError::NotADeployment { problem, .. }) => problem,
            other => panic!("{text}: expected NotADeployment, got {other:?}"),
        };
        assert_eq!(
            problem("[1, 2]"),
            ShapeError::TopLevel { found: "an array" }
        );
        assert_eq!(
            problem(r#"{"modulesContent": {"$edgeHub": {}}}"#),
            ShapeError::NoEdgeAgent
        );
        assert_eq!(
            problem(&manifest_with_module(r#"{"settings": {"image": 5}}"#)),
            ShapeError::ImageNotAString {
                module: "m".into(),
                found: "a number"
            }
        );
    }

    #[test]
    fn agent_keys_are_told_apart_by_name() {
        let module = |name, system| AgentKey::Module { name, system };
        for (key, expected) in [
            ("properties.desired", AgentKey::Desired),
            (
                "properties.desired.systemModules",
                AgentKey::Section { system: true },
            ),
            (
                "properties.desired.modules",
                AgentKey::Section { system: false },
            ),
            (
                "properties.desired.systemModules.edgeHub",
                module("edgeHub", true),
            ),
            ("properties.desired.modules.app", module("app", false)),
            ("properties.desired.modules.a.b", module("a.b", false)),
            ("properties.desired.runtime", AgentKey::Other),
            ("properties.desired.runtime.settings", AgentKey::Other),
            ("properties.desiredX", AgentKey::Other),
            ("properties.reported", AgentKey::Other),
            ("$schema", AgentKey::Other),
        ] {
            assert_eq!(AgentKey::of(key), expected, "{key}");
        }
    }

    #[test]
    fn errors_for_a_module_without_an_image() {
        expect_not_a_deployment(
            &manifest_with_module(r#"{"type": "docker"}"#),
            "module `m` has no `settings.image`",
        );
        expect_not_a_deployment(
            &manifest_with_module(r#"{"settings": {"createOptions": "{}"}}"#),
            "module `m` has no `settings.image`",
        );
        expect_not_a_deployment(
            &manifest_with_module(r#"{"settings": {"image": 5}}"#),
            "module `m`: `settings.image` is a number, not a string",
        );
        expect_not_a_deployment(
            &manifest_with_module(r#"{"settings": "x"}"#),
            "module `m`: `settings` is a string",
        );
        expect_not_a_deployment(&manifest_with_module("true"), "module `m` is a boolean");
        // One bad module fails the whole manifest, wherever it is.
        let layered = r#"{"modulesContent": {"$edgeAgent": {"properties.desired.modules.ok": {"settings": {"image": "a"}}, "properties.desired.modules.broken": {"settings": {}}}}}"#;
        expect_not_a_deployment(layered, "module `broken`");
    }

    fn name(repository: &str, tag: Option<&str>, digest: Option<&str>) -> Option<ImageName> {
        Some(ImageName {
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    #[test]
    fn image_name_table() {
        let d = digest('a');
        let d = d.as_str();
        let sha512 = format!("sha512:{}", "b".repeat(128));
        let table: Vec<(String, Option<ImageName>)> = vec![
            ("nginx".into(), name("library/nginx", None, None)),
            (
                "nginx:1.27".into(),
                name("library/nginx", Some("1.27"), None),
            ),
            ("docker.io/nginx".into(), name("library/nginx", None, None)),
            (
                "docker.io/library/nginx:latest".into(),
                name("library/nginx", Some("latest"), None),
            ),
            (
                "index.docker.io/library/nginx".into(),
                name("library/nginx", None, None),
            ),
            ("library/nginx".into(), name("library/nginx", None, None)),
            (
                "truckco/canbus:1.0".into(),
                name("truckco/canbus", Some("1.0"), None),
            ),
            (
                "docker.io/truckco/canbus:1.0".into(),
                name("truckco/canbus", Some("1.0"), None),
            ),
            (
                "mcr.microsoft.com/azureiotedge-agent:1.5".into(),
                name("azureiotedge-agent", Some("1.5"), None),
            ),
            (
                "shipregistry.azurecr.io/edge/filter:2.3.1".into(),
                name("edge/filter", Some("2.3.1"), None),
            ),
            ("localhost/app".into(), name("app", None, None)),
            (
                "localhost:5000/edge/app:v2".into(),
                name("edge/app", Some("v2"), None),
            ),
            (
                "registry:5000/edge/app".into(),
                name("edge/app", None, None),
            ),
            (
                "10.0.0.1:5000/a/b/c:t".into(),
                name("a/b/c", Some("t"), None),
            ),
            (
                "[::1]:5000/edge/app:v2".into(),
                name("edge/app", Some("v2"), None),
            ),
            ("edge/app@".to_string() + d, name("edge/app", None, Some(d))),
            (
                "edge/app:v2@".to_string() + d,
                name("edge/app", Some("v2"), Some(d)),
            ),
            (
                "localhost:5000/edge/app:v2@".to_string() + d,
                name("edge/app", Some("v2"), Some(d)),
            ),
            (
                "nginx@".to_string() + d,
                name("library/nginx", None, Some(d)),
            ),
            (
                format!("edge/app@{sha512}"),
                name("edge/app", None, Some(&sha512)),
            ),
            (
                "my_org/my-app__x.y:1_A-b.c".into(),
                name("my_org/my-app__x.y", Some("1_A-b.c"), None),
            ),
            // template variables
            ("${MODULES.SampleModule}".into(), None),
            ("${MODULES.SampleModule.amd64}".into(), None),
            ("$CONTAINER_REGISTRY_ADDRESS/app:1.0".into(), None),
            ("edge/app:$TAG".into(), None),
            // empty or malformed
            ("".into(), None),
            (" nginx".into(), None),
            ("Edge/App".into(), None),
            ("edge//app".into(), None),
            ("/app".into(), None),
            ("app/".into(), None),
            ("app:".into(), None),
            (":v1".into(), None),
            ("app:tag:more".into(), None),
            ("app:-tag".into(), None),
            ("app@".into(), None),
            ("app@sha256:abc".into(), None),
            (format!("app@sha256:{}", "A".repeat(64)), None),
            ("app@md5".into(), None),
            ("host:port/app".into(), None),
            ("host:123456/app".into(), None),
            ("-host.io/app".into(), None),
            ("edge/app--".into(), None),
            ("edge/a...b".into(), None),
            (format!("app:{}", "t".repeat(129)), None),
            (format!("a/{}", "b".repeat(255)), None),
        ];
        for (reference, expected) in table {
            assert_eq!(image_name(&reference), expected, "{reference:?}");
        }
    }

    #[test]
    fn serializes_for_reports() {
        let value = serde_json::to_value(image_name("edge/app:v2").unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"repository": "edge/app", "tag": "v2", "digest": null})
        );
        let value = serde_json::to_value(change("m", "imagePullPolicy set to never")).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"module": "m", "what": "imagePullPolicy set to never"})
        );
        let value = serde_json::to_value(image("m", false, "a", None)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"module": "m", "system": false, "image": "a", "pull_policy": null})
        );
    }
}
