//! The parameters of the GNU Mach bootstrap task's scenarios (`guest-payload/mach/`).
//!
//! The task is C and keeps its own defaults; these structs say which names each scenario reads
//! and that every value is a 32-bit unsigned word (booleans go as 0/1), so a suite is checked
//! on the host. Every scenario also takes `limit` (the count at which it stops) and `seconds`.

use super::{Check, ParamError, RawParams};
use serde::{Deserialize, Deserializer, Serialize};

/// One value on the task's command line: `key=<u32>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Word(pub u32);

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Word;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-negative integer below 2^32, or a boolean (the Mach task takes integers)")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Word, E> {
                Ok(Word(u32::from(b)))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Word, E> {
                u32::try_from(n)
                    .map(Word)
                    .map_err(|_| E::custom(format!("{n} does not fit 32 bits")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Word, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("{n} is not a non-negative integer"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The parameters of the task's `scenario` as it will read them (its defaults stay in C): the
/// GNU Mach route of [`crate::registry`].
pub fn resolve(scenario: &str, params: &RawParams) -> Result<serde_json::Value, ParamError> {
    crate::registry::resolve(crate::registry::Route::MachTask, scenario, params)
}

/// Parses one value as the task reads it.
pub fn word(value: &serde_json::Value) -> Result<Word, String> {
    Word::deserialize(value).map_err(|e| e.to_string())
}

macro_rules! mach_scenarios {
    ($($name:literal => $ty:ident { $($field:ident),* }),* $(,)?) => {
        $(
            #[doc = concat!("`", $name, "`: the names it reads besides `limit` and `seconds`.")]
            #[derive(Debug, Clone, Default, Deserialize, Serialize)]
            #[serde(deny_unknown_fields)]
            pub struct $ty {
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub limit: Option<Word>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub seconds: Option<Word>,
                $(
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                    pub $field: Option<Word>,
                )*
            }
        )*

    };
}

mach_scenarios! {
    "task-hoard" => TaskHoard {},
    "task-churn" => TaskChurn { cleanup, rpc },
    "port-hoard" => PortHoard {},
    "port-churn" => PortChurn { batch },
    "no-senders-flood" => NoSendersFlood { drain },
    "spawn-kill" => SpawnKill { tasks, ports, kill_delay_ms },
}

/// The task's table of port names it can hold at once (`names[]` in scenarios.c).
const MAX_NAMES: u32 = 65536;

impl Check for TaskHoard {}
impl Check for TaskChurn {}
impl Check for PortHoard {}
impl Check for NoSendersFlood {}

impl Check for PortChurn {
    fn check(&self) -> Result<(), ParamError> {
        match self.batch {
            Some(Word(b)) if !(1..=MAX_NAMES).contains(&b) => Err(ParamError::field(
                "batch",
                format!("{b} out of range (1 to {MAX_NAMES})"),
            )),
            _ => Ok(()),
        }
    }
}

impl Check for SpawnKill {
    fn check(&self) -> Result<(), ParamError> {
        // The task's own defaults: 30 tasks of 1000 ports.
        let tasks = self.tasks.map_or(30, |w| w.0);
        let ports = self.ports.map_or(1000, |w| w.0);
        if !(1..=256).contains(&tasks) {
            return Err(ParamError::field(
                "tasks",
                format!("{tasks} out of range (1 to 256)"),
            ));
        }
        if ports < 1 || u64::from(tasks) * u64::from(ports) > u64::from(MAX_NAMES) {
            return Err(ParamError::field(
                "ports",
                format!("{ports} out of range (1 to {MAX_NAMES} / tasks)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::raw;
    use super::*;
    use serde_json::json;

    #[test]
    fn known_names_and_words() {
        let p = resolve("task-churn", &raw(json!({"cleanup": false, "limit": 10}))).unwrap();
        assert_eq!(p, json!({"cleanup": 0, "limit": 10}));
        let e = resolve("task-churn", &raw(json!({"colour": 3}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"), "{e}");
        let e = resolve("port-hoard", &raw(json!({"limit": -1}))).unwrap_err();
        assert_eq!(e.to_string(), "limit: -1 is not a non-negative integer");
        let e = resolve("port-hoard", &raw(json!({"limit": 1u64 << 32}))).unwrap_err();
        assert!(e.message.contains("32 bits"), "{e}");
        let e = resolve("port-hoard", &raw(json!({"limit": "lots"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limit"), "{e}");
        let e = resolve("spawn-kill", &raw(json!({"tasks": 300}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tasks"), "{e}");
        let e = resolve("port-churn", &raw(json!({"batch": 0}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("batch"), "{e}");
        let e = resolve("fork-hold", &RawParams::new()).unwrap_err();
        assert!(e.message.contains("task-hoard"), "{e}");
    }
}
