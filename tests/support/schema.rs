//! An offline stand-in for the API server's admission of custom resources.
//!
//! No API server runs in the tests, so this module does to an object what kube-apiserver does
//! when `kubectl apply` sends it (kubectl's default is `--validate=strict`), in the same order:
//!
//! 1. strict decoding: a field the schema does not declare is refused with a 400
//!    (`strict decoding error: unknown field "spec.foo"`), and nothing else is checked;
//! 2. nulls of non-nullable fields are dropped, then the schema's `default`s are applied;
//! 3. the object is checked against the OpenAPI v3 schema: `type`, `properties`, `required`,
//!    `additionalProperties` (maps), `enum`, `pattern`, `minLength`/`maxLength` (characters),
//!    `minimum`/`maximum`, `minItems`/`maxItems`, `minProperties`/`maxProperties`, `nullable`,
//!    `x-kubernetes-int-or-string` and `x-kubernetes-preserve-unknown-fields`;
//! 4. unless step 3 found a "blocking" error (a wrong type, a missing required field, an
//!    unsupported enum value, a too long string or too many items), the CEL rules
//!    (`x-kubernetes-validations`) run on the defaulted object through kube's client-side
//!    evaluator, [`kube::core::cel::Validator`]. Transition rules (`oldSelf`) run on updates only.
//!
//! Errors are rendered as the API server renders its `field.Error`s, e.g.
//! `spec.resources.gpus: Invalid value: 17: spec.resources.gpus in body should be less than or equal to 16`.
//! Not modelled: `format` checks, `uniqueItems`/`x-kubernetes-list-type`, ratcheting of unchanged
//! invalid fields on update, and CEL cost budgets.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{ErrorKind, ValidationError, Validator};
use regex::Regex;
use serde_json::{Map, Value};

/// The detail the API server adds when schema errors kept it from running the CEL rules.
pub const RULES_NOT_CHECKED: &str = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

/// `metadata` fields the API server's strict decoder knows (`ObjectMeta`).
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// A lowercase RFC 1123 subdomain: what the API server accepts as the name of a custom resource.
const DNS1123_SUBDOMAIN: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

/// The type of a field error, as `k8s.io/apimachinery/pkg/util/validation/field` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// A field the schema does not declare (strict field validation).
    UnknownField,
    /// `Required value`.
    Required,
    /// `Invalid value`: a pattern, bound or CEL rule.
    Invalid,
    /// `Invalid value`, for a value of the wrong JSON type (blocks the CEL rules).
    TypeInvalid,
    /// `Unsupported value`: not one of the enum's values.
    NotSupported,
    /// `Too long`: more characters than `maxLength`.
    TooLong,
    /// `Too many`: more items than `maxItems` (or properties than `maxProperties`).
    TooMany,
    /// `Forbidden`: a CEL rule with reason `FieldValueForbidden`.
    Forbidden,
    /// `Duplicate value`: a CEL rule with reason `FieldValueDuplicate`.
    Duplicate,
    /// `Internal error`: a rule that could not be evaluated, or a pattern that does not compile.
    Internal,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::UnknownField => "unknown field",
            ErrorType::Required => "Required value",
            ErrorType::Invalid | ErrorType::TypeInvalid => "Invalid value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::Internal => "Internal error",
        }
    }

    /// Whether the API server skips the CEL rules when a schema error of this type exists.
    fn blocks_cel(self) -> bool {
        matches!(
            self,
            ErrorType::NotSupported
                | ErrorType::Required
                | ErrorType::TooLong
                | ErrorType::TooMany
                | ErrorType::TypeInvalid
        )
    }
}

/// One refusal reason, located by its field path (`spec.resources.gpus`, `spec.dataSources[1]`).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// What kind of error.
    pub kind: ErrorType,
    /// Field path; empty for the object as a whole (the API server prints `<nil>`).
    pub field: String,
    /// The offending value, printed after the type (omitted for required/forbidden/too long).
    pub bad_value: Value,
    /// Explanation.
    pub detail: String,
}

impl FieldError {
    fn new(kind: ErrorType, field: &str, bad_value: Value, detail: impl Into<String>) -> Self {
        FieldError {
            kind,
            field: field.to_owned(),
            bad_value,
            detail: detail.into(),
        }
    }

    /// The message without the path, as `field.Error.ErrorBody()` renders it.
    pub fn body(&self) -> String {
        let mut body = match self.kind {
            ErrorType::UnknownField => return format!("unknown field \"{}\"", self.field),
            ErrorType::Required
            | ErrorType::Forbidden
            | ErrorType::TooLong
            | ErrorType::Internal => self.kind.as_str().to_owned(),
            _ => format!("{}: {}", self.kind.as_str(), render_value(&self.bad_value)),
        };
        if !self.detail.is_empty() {
            body.push_str(": ");
            body.push_str(&self.detail);
        }
        body
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() {
            "<nil>"
        } else {
            &self.field
        };
        write!(f, "{field}: {}", self.body())
    }
}

/// How the API server refused an object.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// 400: the object could not be decoded strictly (unknown fields).
    BadRequest,
    /// 422: the object failed validation.
    Invalid,
}

/// The API server's answer to an object it refuses.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// 400 or 422.
    pub status: Status,
    /// Kind of the refused object.
    pub kind: String,
    /// `apiVersion` of the refused object, e.g. `atelier.dev/v1alpha1`.
    pub api_version: String,
    /// `metadata.name` of the refused object.
    pub name: String,
    /// Every reason, in the order the API server reports them.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        let (group, version) = self.api_version.split_once('/').unwrap_or_default();
        match self.status {
            Status::BadRequest => {
                let unknown: Vec<String> = self.errors.iter().map(FieldError::body).collect();
                write!(
                    f,
                    "{kind} in version {:?} cannot be handled as a {kind}: strict decoding error: {}",
                    version,
                    unknown.join(", "),
                    kind = self.kind
                )
            }
            Status::Invalid => {
                write!(f, "{}.{group} {:?} is invalid: ", self.kind, self.name)?;
                if let [one] = errors.as_slice() {
                    write!(f, "{one}")
                } else {
                    write!(f, "[{}]", errors.join(", "))
                }
            }
        }
    }
}

/// Admission of the custom resources of one CRD (its first served version).
pub struct CrdValidator {
    kind: String,
    group: String,
    version: String,
    namespaced: bool,
    schema: Value,
    /// Rule text → `type` of the schema node declaring it (the "value" of a failed rule).
    rule_types: HashMap<String, String>,
}

impl CrdValidator {
    /// Reads the `openAPIV3Schema` of the CRD's first version.
    pub fn new(crd: &CustomResourceDefinition) -> Self {
        let version = &crd.spec.versions[0];
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has an openAPIV3Schema");
        let schema = serde_json::to_value(schema).expect("a schema serializes to JSON");
        let mut rule_types = HashMap::new();
        collect_rule_types(&schema, &mut rule_types);
        CrdValidator {
            kind: crd.spec.names.kind.clone(),
            group: crd.spec.group.clone(),
            version: version.name.clone(),
            namespaced: crd.spec.scope == "Namespaced",
            schema,
            rule_types,
        }
    }

    /// The kind this CRD serves.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The CRD's `openAPIV3Schema`.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Whether its resources live in a namespace.
    pub fn namespaced(&self) -> bool {
        self.namespaced
    }

    /// What the API server does on create: the defaulted object, or the refusal.
    pub fn create(&self, object: &Value) -> Result<Value, Refusal> {
        self.admit(object, None)
    }

    /// What the API server does on update from `old` (transition rules run).
    pub fn update(&self, object: &Value, old: &Value) -> Result<Value, Refusal> {
        self.admit(object, Some(old))
    }

    fn admit(&self, object: &Value, old: Option<&Value>) -> Result<Value, Refusal> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let refuse = |status, errors| Refusal {
            status,
            kind: self.kind.clone(),
            api_version: format!("{}/{}", self.group, self.version),
            name: name.clone(),
            errors,
        };

        let unknown = unknown_fields(&self.schema, object);
        if !unknown.is_empty() {
            return Err(refuse(Status::BadRequest, unknown));
        }

        let mut errors = self.type_meta_errors(object);
        errors.extend(metadata_errors(object.get("metadata")));
        let defaulted = apply_defaults(&self.schema, object);
        errors.extend(validate_schema(&self.schema, &defaulted));
        if errors.iter().any(|e| e.kind.blocks_cel()) {
            errors.push(FieldError::new(
                ErrorType::Invalid,
                "",
                Value::Null,
                RULES_NOT_CHECKED,
            ));
        } else {
            let old = old.map(|o| apply_defaults(&self.schema, o));
            errors.extend(self.cel_errors(&defaulted, old.as_ref()));
        }

        if errors.is_empty() {
            Ok(defaulted)
        } else {
            Err(refuse(Status::Invalid, errors))
        }
    }

    fn type_meta_errors(&self, object: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let api_version = format!("{}/{}", self.group, self.version);
        for (field, want) in [("apiVersion", &api_version), ("kind", &self.kind)] {
            match object.get(field) {
                Some(Value::String(got)) if got == want => {}
                got => errors.push(FieldError::new(
                    ErrorType::Invalid,
                    field,
                    got.cloned().unwrap_or(Value::Null),
                    format!("must be {want:?}"),
                )),
            }
        }
        errors
    }

    /// Runs the CEL rules and renders their failures as the API server does.
    fn cel_errors(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        match Validator::new().validate(&self.schema, object, old) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| self.cel_error(e)).collect(),
        }
    }

    fn cel_error(&self, error: &ValidationError) -> FieldError {
        let field = error.field_path.as_str();
        if error.kind != ErrorKind::ValidationFailure {
            // A rule that does not compile or cannot be evaluated: never an acceptable outcome.
            return FieldError::new(ErrorType::Internal, field, Value::Null, &error.message);
        }
        let node_type = self
            .rule_types
            .get(&error.rule)
            .cloned()
            .unwrap_or_default();
        match error.reason.as_deref() {
            Some("FieldValueForbidden") => {
                FieldError::new(ErrorType::Forbidden, field, Value::Null, &error.message)
            }
            Some("FieldValueRequired") => {
                FieldError::new(ErrorType::Required, field, Value::Null, &error.message)
            }
            Some("FieldValueDuplicate") => {
                FieldError::new(ErrorType::Duplicate, field, Value::String(node_type), "")
            }
            _ => FieldError::new(
                ErrorType::Invalid,
                field,
                Value::String(node_type),
                &error.message,
            ),
        }
    }
}

/// Renders a bad value as `field.Error` does: strings quoted, numbers and booleans bare, the rest
/// as JSON.
fn render_value(value: &Value) -> String {
    match value {
        Value::Null => "\"null\"".to_owned(),
        other => other.to_string(),
    }
}

/// The JSON type name the OpenAPI validator reports for a value.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The schema of a map's values, when `additionalProperties` is a schema.
fn map_values(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

fn collect_rule_types(schema: &Value, out: &mut HashMap<String, String>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        let node_type = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for rule in rules.iter().filter_map(|r| r.get("rule")?.as_str()) {
            out.insert(rule.to_owned(), node_type.to_owned());
        }
    }
    for sub in properties(schema)
        .into_iter()
        .flat_map(Map::values)
        .chain(schema.get("items"))
        .chain(map_values(schema))
    {
        collect_rule_types(sub, out);
    }
}

/// Step 1: the fields of `object` its schema does not declare, as strict decoding reports them.
/// `apiVersion`, `kind` and `metadata` are implicit at the root.
pub fn unknown_fields(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut out = Vec::new();
    if let Some(obj) = object.as_object() {
        for (key, value) in obj {
            match key.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    for meta_key in value.as_object().into_iter().flat_map(Map::keys) {
                        if !OBJECT_META_FIELDS.contains(&meta_key.as_str()) {
                            out.push(unknown(&child("metadata", meta_key)));
                        }
                    }
                }
                _ => match properties(schema).and_then(|p| p.get(key)) {
                    Some(prop) => collect_unknown(prop, value, key, &mut out),
                    None => out.push(unknown(key)),
                },
            }
        }
    }
    out
}

fn unknown(field: &str) -> FieldError {
    FieldError::new(ErrorType::UnknownField, field, Value::Null, "")
}

fn collect_unknown(schema: &Value, value: &Value, path: &str, out: &mut Vec<FieldError>) {
    match value {
        Value::Object(obj) => {
            for (key, val) in obj {
                let path = child(path, key);
                if let Some(prop) = properties(schema).and_then(|p| p.get(key)) {
                    collect_unknown(prop, val, &path, out);
                } else if let Some(values) = map_values(schema) {
                    collect_unknown(values, val, &path, out);
                } else if !flag(schema, "x-kubernetes-preserve-unknown-fields") {
                    out.push(unknown(&path));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    collect_unknown(item_schema, item, &index(path, i), out);
                }
            }
        }
        _ => {}
    }
}

/// Step 2: drops nulls of non-nullable fields that have no default, then applies the defaults
/// (into defaults just applied too), as the API server does before validating.
pub fn apply_defaults(schema: &Value, value: &Value) -> Value {
    match value {
        Value::Object(obj) => {
            let mut out = obj.clone();
            if let Some(props) = properties(schema) {
                for (key, prop) in props {
                    let default = prop.get("default");
                    match out.get(key) {
                        Some(Value::Null) if !flag(prop, "nullable") => match default {
                            Some(d) => {
                                out.insert(key.clone(), d.clone());
                            }
                            None => {
                                out.remove(key);
                            }
                        },
                        None => {
                            if let Some(d) = default {
                                out.insert(key.clone(), d.clone());
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
            for (key, val) in out.iter_mut() {
                let sub = properties(schema)
                    .and_then(|p| p.get(key))
                    .or_else(|| map_values(schema));
                if let Some(sub) = sub {
                    *val = apply_defaults(sub, val);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) => Value::Array(
                items
                    .iter()
                    .map(|item| apply_defaults(item_schema, item))
                    .collect(),
            ),
            None => value.clone(),
        },
        _ => value.clone(),
    }
}

/// Step 3: checks a (defaulted) object against the OpenAPI v3 schema of its CRD.
pub fn validate_schema(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    // The root's implicit `apiVersion`, `kind` and `metadata` are checked elsewhere.
    if let (Some(props), Some(obj)) = (properties(schema), object.as_object()) {
        for key in required(schema) {
            if !obj.contains_key(key) {
                errors.push(FieldError::new(ErrorType::Required, key, Value::Null, ""));
            }
        }
        for (key, prop) in props {
            if let Some(value) = obj.get(key) {
                validate_value(prop, value, key, &mut errors);
            }
        }
    }
    errors
}

fn required(schema: &Value) -> impl Iterator<Item = &str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match (expected, value) {
        ("object", Value::Object(_))
        | ("array", Value::Array(_))
        | ("string", Value::String(_))
        | ("boolean", Value::Bool(_))
        | ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// Validates one value against its schema node, appending errors under `path`.
pub fn validate_value(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let invalid = |detail: String| FieldError::new(ErrorType::Invalid, path, value.clone(), detail);

    if value.is_null() {
        if !flag(schema, "nullable") {
            let expected = schema.get("type").and_then(Value::as_str).unwrap_or("");
            errors.push(type_error(path, expected, value));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(type_matches("integer", value) || value.is_string()) {
            errors.push(type_error(path, "integer,string", value));
            return;
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !type_matches(expected, value)
    {
        errors.push(type_error(path, expected, value));
        return;
    }

    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let values: Vec<String> = allowed
            .iter()
            .map(|v| match v {
                Value::String(s) => format!("{s:?}"),
                other => format!("{:?}", other.to_string()),
            })
            .collect();
        errors.push(FieldError::new(
            ErrorType::NotSupported,
            path,
            value.clone(),
            format!("supported values: {}", values.join(", ")),
        ));
    }

    match value {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && chars > max
            {
                errors.push(FieldError::new(
                    ErrorType::TooLong,
                    path,
                    Value::Null,
                    format!("may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && chars < min
            {
                errors.push(invalid(format!(
                    "{path} in body should be at least {min} chars long"
                )));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match pattern_matches(pattern, s) {
                    Ok(true) => {}
                    Ok(false) => {
                        errors.push(invalid(format!("{path} in body should match '{pattern}'")))
                    }
                    Err(e) => errors.push(FieldError::new(
                        ErrorType::Internal,
                        path,
                        Value::Null,
                        format!("pattern {pattern:?} does not compile: {e}"),
                    )),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if flag(schema, "exclusiveMaximum") && x >= max {
                    errors.push(invalid(format!("{path} in body should be less than {max}")));
                } else if x > max {
                    errors.push(invalid(format!(
                        "{path} in body should be less than or equal to {max}"
                    )));
                }
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if flag(schema, "exclusiveMinimum") && x <= min {
                    errors.push(invalid(format!(
                        "{path} in body should be greater than {min}"
                    )));
                } else if x < min {
                    errors.push(invalid(format!(
                        "{path} in body should be greater than or equal to {min}"
                    )));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                errors.push(FieldError::new(
                    ErrorType::TooMany,
                    path,
                    len.into(),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                errors.push(FieldError::new(
                    ErrorType::Invalid,
                    path,
                    len.into(),
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_value(item_schema, item, &index(path, i), errors);
                }
            }
        }
        Value::Object(obj) => {
            let len = obj.len() as u64;
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && len > max
            {
                errors.push(FieldError::new(
                    ErrorType::TooMany,
                    path,
                    len.into(),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
                && len < min
            {
                errors.push(FieldError::new(
                    ErrorType::Invalid,
                    path,
                    len.into(),
                    format!("{path} in body should have at least {min} properties"),
                ));
            }
            for key in required(schema) {
                if !obj.contains_key(key) {
                    errors.push(FieldError::new(
                        ErrorType::Required,
                        &child(path, key),
                        Value::Null,
                        "",
                    ));
                }
            }
            // Sorted, so that errors come in a stable order.
            let sorted: BTreeMap<&String, &Value> = obj.iter().collect();
            for (key, val) in sorted {
                let sub = properties(schema)
                    .and_then(|p| p.get(key))
                    .or_else(|| map_values(schema));
                if let Some(sub) = sub {
                    validate_value(sub, val, &child(path, key), errors);
                }
                // Other keys were refused as unknown fields, or are kept by
                // `x-kubernetes-preserve-unknown-fields` without a schema.
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn type_error(path: &str, expected: &str, value: &Value) -> FieldError {
    let actual = json_type(value);
    FieldError::new(
        ErrorType::TypeInvalid,
        path,
        Value::String(actual.to_owned()),
        format!("{path} in body must be of type {expected}: \"{actual}\""),
    )
}

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

/// Whether `s` matches the schema `pattern` (unanchored, like Go's `regexp.MatchString`).
pub fn pattern_matches(pattern: &str, s: &str) -> Result<bool, regex::Error> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(re) = cache.get(pattern) {
            return Ok(re.is_match(s));
        }
        let re = Regex::new(pattern)?;
        let matched = re.is_match(s);
        cache.insert(pattern.to_owned(), re);
        Ok(matched)
    })
}

/// What the API server checks in `metadata` on create: a DNS-1123 subdomain name, and string maps
/// of labels and annotations.
fn metadata_errors(metadata: Option<&Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(meta) = metadata.and_then(Value::as_object) else {
        errors.push(FieldError::new(
            ErrorType::Required,
            "metadata.name",
            Value::Null,
            "name or generateName is required",
        ));
        return errors;
    };
    match meta.get("name") {
        Some(Value::String(name)) => {
            let anchored = format!("^{DNS1123_SUBDOMAIN}$");
            if name.len() > 253 || !pattern_matches(&anchored, name).unwrap_or(false) {
                errors.push(FieldError::new(
                    ErrorType::Invalid,
                    "metadata.name",
                    Value::String(name.clone()),
                    format!(
                        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN}')"
                    ),
                ));
            }
        }
        _ if meta.contains_key("generateName") => {}
        _ => errors.push(FieldError::new(
            ErrorType::Required,
            "metadata.name",
            Value::Null,
            "name or generateName is required",
        )),
    }
    for map in ["labels", "annotations"] {
        if let Some(entries) = meta.get(map) {
            let string_map = serde_json::json!({
                "type": "object",
                "additionalProperties": {"type": "string"},
            });
            validate_value(&string_map, entries, &child("metadata", map), &mut errors);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A hand-written schema using every keyword the validator handles.
    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["user"],
                    "x-kubernetes-validations": [
                        {"rule": "!has(self.gpuType) || (has(self.gpus) && self.gpus > 0)",
                         "message": "gpuType requires gpus > 0",
                         "fieldPath": ".gpuType"},
                        {"rule": "self.user == oldSelf.user",
                         "message": "user is immutable",
                         "reason": "FieldValueForbidden"},
                    ],
                    "properties": {
                        "user": {"type": "string", "minLength": 1, "maxLength": 8,
                                 "pattern": "^[a-z]+$"},
                        "kind": {"type": "string", "enum": ["jupyter", "rstudio"],
                                 "nullable": true},
                        "gpus": {"type": "integer", "minimum": 0.0, "maximum": 16.0},
                        "gpuType": {"type": "string"},
                        "ratio": {"type": "number", "maximum": 1.0},
                        "enabled": {"type": "boolean", "default": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "minItems": 1, "maxItems": 2,
                                 "items": {"type": "string"}},
                        "env": {"type": "object",
                                "additionalProperties": {"type": "string"}},
                        "extra": {"type": "object",
                                  "x-kubernetes-preserve-unknown-fields": true,
                                  "properties": {"known": {"type": "integer"}}},
                        "home": {"type": "object",
                                 "default": {"size": "10Gi"},
                                 "properties": {
                                     "size": {"type": "string"},
                                     "mountPath": {"type": "string", "default": "/home"},
                                 }},
                    },
                },
            },
        })
    }

    fn crd(schema: Value) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.org"},
            "spec": {
                "group": "example.org",
                "names": {"kind": "Widget", "plural": "widgets"},
                "scope": "Namespaced",
                "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": schema}}],
            },
        }))
        .expect("a valid CRD")
    }

    fn widget(spec: Value) -> Value {
        json!({
            "apiVersion": "example.org/v1alpha1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "default"},
            "spec": spec,
        })
    }

    fn refuse(spec: Value) -> Vec<String> {
        match CrdValidator::new(&crd(schema())).create(&widget(spec)) {
            Ok(obj) => panic!("accepted: {obj}"),
            Err(refusal) => refusal.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn accepts_a_valid_object_and_applies_defaults() {
        let v = CrdValidator::new(&crd(schema()));
        let obj = widget(json!({
            "user": "alice", "kind": null, "gpus": 2, "gpuType": "a100", "ratio": 0.5,
            "port": "http", "tags": ["a"], "env": {"A": "1"},
            "extra": {"known": 1, "anything": {"goes": true}},
        }));
        let defaulted = v.create(&obj).expect("valid");
        assert_eq!(defaulted["spec"]["enabled"], json!(true));
        // A default is applied, then defaulted itself.
        assert_eq!(
            defaulted["spec"]["home"],
            json!({"size": "10Gi", "mountPath": "/home"})
        );
        // `nullable: true` keeps the null.
        assert_eq!(defaulted["spec"]["kind"], Value::Null);
        // An integer is accepted where int-or-string is.
        let mut int_port = obj.clone();
        int_port["spec"]["port"] = json!(8080);
        assert!(v.create(&int_port).is_ok());
    }

    #[test]
    fn nulls_of_non_nullable_fields_are_dropped_or_defaulted() {
        let defaulted = apply_defaults(
            &schema()["properties"]["spec"],
            &json!({"user": "a", "gpus": null, "enabled": null}),
        );
        assert_eq!(defaulted.get("gpus"), None);
        assert_eq!(defaulted["enabled"], json!(true));
    }

    #[test]
    fn reports_schema_errors_like_the_api_server() {
        assert_eq!(
            refuse(json!({"user": "alice", "gpus": 17})),
            ["spec.gpus: Invalid value: 17: spec.gpus in body should be less than or equal to 16"]
        );
        assert_eq!(
            refuse(json!({"user": "alice", "gpus": -1})),
            [
                "spec.gpus: Invalid value: -1: spec.gpus in body should be greater than or equal to 0"
            ]
        );
        assert_eq!(
            refuse(json!({"user": "Alice"})),
            ["spec.user: Invalid value: \"Alice\": spec.user in body should match '^[a-z]+$'"]
        );
        assert_eq!(
            refuse(json!({"user": ""})),
            [
                "spec.user: Invalid value: \"\": spec.user in body should be at least 1 chars long",
                "spec.user: Invalid value: \"\": spec.user in body should match '^[a-z]+$'",
            ]
        );
        assert_eq!(
            refuse(json!({"user": "alice", "tags": []})),
            ["spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items"]
        );
        assert_eq!(
            refuse(json!({"user": "alice", "ratio": 1.5})),
            [
                "spec.ratio: Invalid value: 1.5: spec.ratio in body should be less than or equal to 1"
            ]
        );
        assert_eq!(
            refuse(json!({"user": "alice", "gpus": 1, "gpuType": "a100", "env": {"A": 1}})),
            [
                "spec.env.A: Invalid value: \"integer\": spec.env.A in body must be of type string: \"integer\"",
                &format!("<nil>: Invalid value: \"null\": {RULES_NOT_CHECKED}"),
            ]
        );
    }

    #[test]
    fn blocking_errors_skip_the_cel_rules() {
        // gpuType without gpus breaks a CEL rule, but the enum error blocks the rules.
        let errors = refuse(json!({"user": "alice", "kind": "vscode", "gpuType": "a100"}));
        assert_eq!(
            errors,
            [
                "spec.kind: Unsupported value: \"vscode\": supported values: \"jupyter\", \"rstudio\"",
                &format!("<nil>: Invalid value: \"null\": {RULES_NOT_CHECKED}"),
            ]
        );
        // Too long (in characters, not bytes), too many, wrong type and required block too.
        for (spec, first) in [
            (
                json!({"user": "ééééééééé"}),
                "spec.user: Too long: may not be more than 8 bytes",
            ),
            (
                json!({"user": "a", "tags": ["a", "b", "c"]}),
                "spec.tags: Too many: 3: must have at most 2 items",
            ),
            (
                json!({"user": "a", "gpus": "2"}),
                "spec.gpus: Invalid value: \"string\": spec.gpus in body must be of type integer: \"string\"",
            ),
            (json!({"gpus": 1}), "spec.user: Required value"),
        ] {
            let errors = refuse(spec);
            assert_eq!(errors.first().map(String::as_str), Some(first));
            assert!(
                errors.last().unwrap().ends_with(RULES_NOT_CHECKED),
                "{errors:?}"
            );
        }
        // "ééééééé" is 7 characters (14 bytes): maxLength counts characters.
        let v = CrdValidator::new(&crd(schema()));
        let ok = widget(json!({"user": "abcdefg"}));
        assert!(v.create(&ok).is_ok());
        let seven_chars = widget(json!({"user": "ééééééé"}));
        let errors = v.create(&seven_chars).unwrap_err().errors;
        assert!(
            errors.iter().all(|e| e.kind != ErrorType::TooLong),
            "{errors:?}"
        );
    }

    #[test]
    fn runs_cel_rules_after_the_schema() {
        assert_eq!(
            refuse(json!({"user": "alice", "gpuType": "a100"})),
            ["spec.gpuType: Invalid value: \"object\": gpuType requires gpus > 0"]
        );
        // The transition rule runs on update only.
        let v = CrdValidator::new(&crd(schema()));
        let old = widget(json!({"user": "alice"}));
        let new = widget(json!({"user": "bob"}));
        assert!(v.create(&new).is_ok());
        assert!(v.update(&new, &new).is_ok());
        let refusal = v.update(&new, &old).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "Widget.example.org \"w1\" is invalid: spec: Forbidden: user is immutable"
        );
    }

    #[test]
    fn refuses_unknown_fields_like_strict_field_validation() {
        let v = CrdValidator::new(&crd(schema()));
        let mut obj = widget(json!({"user": "alice", "foo": 1, "home": {"sise": "1Gi"}}));
        obj["metadata"]["labelz"] = json!({});
        let refusal = v.create(&obj).unwrap_err();
        assert_eq!(refusal.status, Status::BadRequest);
        let errors: Vec<String> = refusal.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "metadata.labelz: unknown field \"metadata.labelz\"",
                "spec.foo: unknown field \"spec.foo\"",
                "spec.home.sise: unknown field \"spec.home.sise\"",
            ]
        );
        assert!(
            refusal
                .to_string()
                .ends_with("strict decoding error: unknown field \"metadata.labelz\", unknown field \"spec.foo\", unknown field \"spec.home.sise\""),
            "{refusal}"
        );
        // Map keys and preserved fields are not unknown.
        let ok = widget(json!({"user": "a", "env": {"ANY": "x"}, "extra": {"free": {"a": 1}}}));
        assert!(v.create(&ok).is_ok());
        // Nor are the root's implicit fields; an unknown root field is.
        let mut root = widget(json!({"user": "a"}));
        root["spek"] = json!({});
        assert_eq!(unknown_fields(v.schema(), &root), [unknown("spek")]);
    }

    #[test]
    fn checks_metadata_and_type_meta() {
        let v = CrdValidator::new(&crd(schema()));
        let mut obj = widget(json!({"user": "a"}));
        obj["metadata"]["name"] = json!("Bad_Name");
        obj["metadata"]["annotations"] = json!({"atelier.dev/groups": true});
        obj["kind"] = json!("Gadget");
        let errors: Vec<String> = v
            .create(&obj)
            .unwrap_err()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(
            errors[0],
            "kind: Invalid value: \"Gadget\": must be \"Widget\""
        );
        assert!(errors[1].starts_with(
            "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        ));
        assert!(
            errors[2]
                .starts_with("metadata.annotations.atelier.dev/groups: Invalid value: \"boolean\"")
        );
        assert!(errors[3].ends_with(RULES_NOT_CHECKED));
    }

    #[test]
    fn renders_refusals_like_the_api_server() {
        let v = CrdValidator::new(&crd(schema()));
        let refusal = v
            .create(&widget(json!({"user": "alice", "gpus": 17})))
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "Widget.example.org \"w1\" is invalid: spec.gpus: Invalid value: 17: spec.gpus in body should be less than or equal to 16"
        );
        let refusal = v
            .create(&widget(json!({"user": "A", "gpus": 17})))
            .unwrap_err();
        assert!(
            refusal.to_string().contains("is invalid: [spec.gpus: "),
            "{refusal}"
        );
    }
}
