//! The shapes of snapinst's JSON output, the types it is made from and its JSON Schemas (`snapinst schema --output
//! status|list|events`): every object carries `apiVersion` (`snapinst/v1`), its `kind` and the older `"v": 1`.
//! `status` and `list` are built from these types; an event line is an `EventLine` envelope (its name one of
//! `EventName`, which is what every emitter names its event with) around the fields of that event.

use crate::pathbytes;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::borrow::Cow;
use std::path::PathBuf;

/// A path as JSON: its text, or `{"hex": BYTES}` when it is not UTF-8 (see `pathbytes`).
#[derive(Debug, Clone)]
pub(crate) struct PathJson(pub PathBuf);

impl Serialize for PathJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        pathbytes::json(&self.0).serialize(s)
    }
}

impl JsonSchema for PathJson {
    fn schema_name() -> Cow<'static, str> {
        "Path".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "a path: its text, or its bytes in hex when it is not UTF-8",
            "oneOf": [
                {"type": "string"},
                {"type": "object", "properties": {"hex": {"type": "string"}}, "required": ["hex"],
                 "additionalProperties": false}
            ]
        })
    }
}

fn v1_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"const": 1, "description": "the older version field, kept for one release"})
}

fn api_version_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"const": crate::events::API_VERSION})
}

/// The fields every object starts with.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct Head {
    #[serde(rename = "apiVersion")]
    #[schemars(schema_with = "api_version_schema")]
    pub api_version: &'static str,
    pub kind: &'static str,
    #[schemars(schema_with = "v1_schema")]
    pub v: u8,
}

impl Head {
    pub fn of(kind: &'static str) -> Head {
        Head { api_version: crate::events::API_VERSION, kind, v: 1 }
    }
}

/// `snapinst status --json`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "snapinst status", extend("additionalProperties" = false))]
pub(crate) struct Status {
    #[serde(flatten)]
    pub head: Head,
    pub root: PathJson,
    pub state_dir: String,
    /// null until a transaction has run.
    pub backend: Option<String>,
    /// The filesystems inside the root that kept generations staged as parts (relative to the root).
    pub parts: Vec<PathJson>,
    pub current_generation: u64,
    pub in_progress: Option<InProgress>,
    /// The transaction kept after a failed step (`--keep-failed`).
    pub kept: Option<Value>,
    pub next_boot_differs: bool,
    pub recovery_failed: Option<String>,
    /// A new generation of a running root waiting for its boots.
    pub pending: Option<Value>,
    pub boot_note: Option<String>,
    pub last_conflicts: Option<Value>,
    pub in_kept_trees: Value,
}

/// An open transaction, in `status`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
pub(crate) struct InProgress {
    pub txn: String,
    /// apply, rollback, ...
    pub kind: Value,
    pub state: Value,
    /// The process holding the lock, if any.
    pub pid: Option<u32>,
    pub interrupted: bool,
    pub plan: Option<String>,
    pub parts: Vec<PathJson>,
}

/// `snapinst list --json`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "snapinst list", extend("additionalProperties" = false))]
pub(crate) struct List {
    #[serde(flatten)]
    pub head: Head,
    pub current_generation: u64,
    pub generations: Vec<ListedGeneration>,
    pub transactions: Vec<ListedTxn>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
pub(crate) struct ListedGeneration {
    pub generation: u64,
    pub time: u64,
    pub plan: Option<String>,
    /// The digest of the plan and its files when it was applied with `--if-changed` (else null).
    pub plan_digest: Option<String>,
    pub parent: Option<u64>,
    pub current: bool,
    pub parts: Vec<PathJson>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
pub(crate) struct ListedTxn {
    pub txn: String,
    pub kind: Value,
    pub time: u64,
    pub plan: Option<String>,
    pub state: Value,
    pub outcome: Option<String>,
    pub failed_step: Option<String>,
    pub from_generation: u64,
    pub to_generation: u64,
    pub parts: Vec<PathJson>,
    /// What the carry-over brought in (btrfs).
    pub carried: Option<Value>,
    pub conflicts: Value,
}

/// The name of an event: what every emitter gives `Reporter::event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventName {
    Started,
    Part,
    UnstagedMount,
    StepStarted,
    StepFinished,
    StepFailed,
    Change,
    Changes,
    CarriedOver,
    Conflict,
    Committed,
    HandedOver,
    CarriedBack,
    RolledBack,
    Kept,
    Resumed,
    Aborted,
    Recovered,
    RecoveryFailed,
    Boot,
    Summary,
}

impl EventName {
    /// The name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::Started => "started",
            EventName::Part => "part",
            EventName::UnstagedMount => "unstaged_mount",
            EventName::StepStarted => "step_started",
            EventName::StepFinished => "step_finished",
            EventName::StepFailed => "step_failed",
            EventName::Change => "change",
            EventName::Changes => "changes",
            EventName::CarriedOver => "carried_over",
            EventName::Conflict => "conflict",
            EventName::Committed => "committed",
            EventName::HandedOver => "handed_over",
            EventName::CarriedBack => "carried_back",
            EventName::RolledBack => "rolled_back",
            EventName::Kept => "kept",
            EventName::Resumed => "resumed",
            EventName::Aborted => "aborted",
            EventName::Recovered => "recovered",
            EventName::RecoveryFailed => "recovery_failed",
            EventName::Boot => "boot",
            EventName::Summary => "summary",
        }
    }
}

/// One line of the events (`--json`, `--progress-fd`): the envelope; each event adds fields of its own.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "snapinst event")]
pub(crate) struct EventLine {
    #[serde(flatten)]
    pub head: Head,
    pub event: EventName,
    /// The transaction (every event of a transaction has it).
    pub txn: Option<String>,
}

/// An output `snapinst schema --output` describes (besides the plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Status,
    List,
    Events,
}

/// The JSON Schema of an output, its `kind` a constant.
pub(crate) fn schema(output: Output) -> Value {
    let (schema, kind) = match output {
        Output::Status => (schemars::schema_for!(Status), "Status"),
        Output::List => (schemars::schema_for!(List), "List"),
        Output::Events => (schemars::schema_for!(EventLine), "Event"),
    };
    let mut value = serde_json::to_value(schema).unwrap_or_default();
    value["properties"]["kind"] = serde_json::json!({"const": kind});
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    impl EventName {
        /// Every event name.
        const ALL: [EventName; 21] = [
            EventName::Started,
            EventName::Part,
            EventName::UnstagedMount,
            EventName::StepStarted,
            EventName::StepFinished,
            EventName::StepFailed,
            EventName::Change,
            EventName::Changes,
            EventName::CarriedOver,
            EventName::Conflict,
            EventName::Committed,
            EventName::HandedOver,
            EventName::CarriedBack,
            EventName::RolledBack,
            EventName::Kept,
            EventName::Resumed,
            EventName::Aborted,
            EventName::Recovered,
            EventName::RecoveryFailed,
            EventName::Boot,
            EventName::Summary,
        ];
    }

    #[test]
    fn event_names_print_as_their_schema_says() {
        let schema = schema(Output::Events);
        let listed = &schema["$defs"]["EventName"]["enum"];
        let ours: Vec<&str> = EventName::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(listed, &serde_json::json!(ours));
        for e in EventName::ALL {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
    }
}
