//! Fuzzing the model's parsers: the policy file, protection selectors, the
//! live-state JSON, the record of pending deferrals and the unit-name
//! helpers.
//!
//! The generators build TOML-ish policy text from the policy's own keys
//! and values (and broken ones), and live states from the JSON shapes
//! systemd's snapshot has (and other JSON, `[]` included). Each property
//! runs a fixed number of cases from a fixed seed (`testbed::fuzz::check`)
//! and checks that nothing panics or hangs and that memory and output stay
//! linear in the input.

use plan_model::policy::{Policy, Selector};
use plan_model::{LiveState, Manager, Pending, unit_name};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use testbed::fuzz::{self, peak_memory, select};

const ODD: &[&str] = &[
    "\0",
    "\u{feff}",
    "\x1b[31m",
    "\r",
    "\t",
    "\n",
    "\u{202e}",
    "\u{2028}",
    "é",
    "\u{10ffff}",
    "\\",
    "\\\\",
    "\\u0000",
    "\\U0010FFFF",
    "\\x",
    "%",
    "\"",
    "'",
    "#",
    "=",
    "[",
    "]",
    "{",
    "}",
    ",",
    "`",
    " ",
    "*",
    "?",
    "[!a]",
    "..",
    "/",
    "@",
];

/// Memory a parse may use: a constant for the parser's set-up and a
/// multiple of the input.
fn memory_bound(input: usize) -> u64 {
    256 * 1024 + 32 * u64::try_from(input).unwrap()
}

/// A selector as a user might write one, or not.
fn selector_text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => select(&["sshd", "sshd.service", "gitlab-runner*", "docker*.service", "getty@tty1", "getty@.service", "dev-x\\x2d1.swap", "-.mount", "*", "?", "[ab].service", "[!a]*"]),
        2 => select(&["", "a b", "../x.service", "{a,b}", "x[ab", "bad$name", "a/b", "x.", ".service", "a\0b", "\u{202e}x"]),
        2 => "[a-zA-Z0-9@._*?\\[\\]!\\\\-]{0,16}",
        1 => select(ODD),
        1 => any::<String>(),
    ]
}

/// A TOML string literal (basic, literal or multi-line), sometimes broken.
fn toml_string(content: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (content, 0..6u8).prop_map(|(c, kind)| match kind {
        0 | 1 => format!("{c:?}"),
        2 => format!("'{c}'"),
        3 => format!("\"\"\"{c}\"\"\""),
        4 => format!("'''{c}'''"),
        _ => format!("\"{c}"),
    })
}

/// A TOML value of any kind.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => toml_string(selector_text()),
        1 => select(&["true", "false", "1", "-0", "1e999", "nan", "1979-05-27", "[]", "{}", "{ a = 1 }", "[[]]", "", "[", "]"]),
        1 => select(ODD),
    ]
}

/// One line of a policy file.
fn policy_line() -> impl Strategy<Value = String> {
    let array = prop::collection::vec((toml_string(selector_text()), select(&[",", ",\n", ", # c\n", ""])), 0..6)
        .prop_map(|items| items.into_iter().map(|(v, sep)| format!("{v}{sep}")).collect::<String>());
    prop_oneof![
        4 => array.prop_map(|items| format!("protect = [{items}]")),
        2 => (select(&["mode", "base", "host"]), prop_oneof![select(&["\"refuse\"", "\"defer\"", "\"sometimes\"", "\"/etc/nixos\""]), toml_value()])
            .prop_map(|(k, v)| format!("{k} = {v}")),
        2 => select(&["[implicit]", "[implicit.x]", "[[protect]]", "[other]", "[", "[implicit]]"]),
        2 => (select(&["dbus", "logind", "caller", "bogus"]), prop_oneof![select(&["true", "false"]), toml_value()])
            .prop_map(|(k, v)| format!("{k} = {v}")),
        1 => (select(&["protcet", "Protect", "protect", "mode.x", "\"protect\"", "a b", "=", ""]), toml_value())
            .prop_map(|(k, v)| format!("{k} = {v}")),
        1 => toml_value().prop_map(|v| format!("# {v}")),
        1 => select(&["", "  ", "\u{feff}", "\r"]),
    ]
}

fn policy_text() -> impl Strategy<Value = String> {
    prop::collection::vec(policy_line(), 0..16).prop_map(|lines| lines.join("\n"))
}

#[test]
fn policy_files_parse_without_panic_in_linear_memory() {
    fuzz::check("policy files", 1024, policy_text(), |text| {
        let (result, peak) = peak_memory(|| Policy::parse(&text));
        prop_assert!(peak <= memory_bound(text.len()), "{peak} bytes for {} bytes of policy", text.len());
        let lines = u32::try_from(text.split('\n').count()).unwrap();
        match result {
            Ok(policy) => {
                for (selector, line) in &policy.protect {
                    prop_assert!(*line >= 1 && *line <= lines, "line {line} of {lines}");
                    prop_assert!(selector.as_str().len() <= text.len());
                }
            }
            Err(err) => {
                prop_assert!(err.line.is_none_or(|l| l >= 1 && l <= lines), "line {:?} of {lines}", err.line);
                prop_assert!(err.to_string().len() <= 8 * text.len() + 512, "{} bytes", err.to_string().len());
            }
        }
        Ok(())
    });
}

#[test]
fn selectors_parse_without_panic() {
    fuzz::check("selectors", 1024, selector_text(), |text| {
        match Selector::parse(&text) {
            Ok(selector) => {
                prop_assert_eq!(selector.as_str(), text.as_str());
                for pattern in selector.patterns() {
                    // Escaping doubles a backslash at most.
                    prop_assert!(pattern.len() <= 2 * text.len() + 16, "{pattern}");
                }
            }
            Err(err) => prop_assert!(err.to_string().len() <= 8 * text.len() + 256),
        }
        Ok(())
    });
}

/// A JSON value of any shape, small.
fn json_value() -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        selector_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(select(&["units", "active_state", "deps", "a.service", "x"]), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const UNIT_FIELDS: &[&str] = &[
    "active_state",
    "sub_state",
    "load_state",
    "fragment_path",
    "drop_in_paths",
    "following",
    "main_pid",
    "invocation_id",
    "exec_main_status",
    "deps",
];

/// A field's value: mostly of the right type, sometimes not.
fn field_value(field: &str) -> BoxedStrategy<Value> {
    let right: BoxedStrategy<Value> = match field {
        "main_pid" => any::<u32>().prop_map(Value::from).boxed(),
        "exec_main_status" => any::<i32>().prop_map(Value::from).boxed(),
        "drop_in_paths" => prop::collection::vec(selector_text(), 0..3).prop_map(|v| json!(v)).boxed(),
        "deps" => prop::collection::btree_map(
            select(&["Requires", "BindsTo", "PartOf", "Conflicts", "TriggeredBy", "Bogus"]),
            prop::collection::vec(selector_text(), 0..3),
            0..4,
        )
        .prop_map(|m| json!(m))
        .boxed(),
        "active_state" => select(&["active", "inactive", "failed", "activating", "reloading", "maintenance", ""])
            .prop_map(Value::from)
            .boxed(),
        _ => selector_text().prop_map(Value::from).boxed(),
    };
    prop_oneof![6 => right, 1 => json_value(), 1 => Just(json!(-1)), 1 => Just(json!(1e300))].boxed()
}

fn live_unit() -> impl Strategy<Value = Value> {
    let fields = prop::collection::vec(prop::sample::select(UNIT_FIELDS), 0..8);
    fields
        .prop_flat_map(|names| {
            let values: Vec<BoxedStrategy<(String, Value)>> =
                names.into_iter().map(|n| field_value(n).prop_map(move |v| (n.to_owned(), v)).boxed()).collect();
            (values, any::<bool>())
        })
        .prop_map(|(fields, unknown)| {
            let mut object: Map<String, Value> = fields.into_iter().collect();
            if unknown {
                object.insert("activeState".to_owned(), json!("active"));
            }
            Value::Object(object)
        })
}

/// A live-state snapshot: mostly shaped like one, sometimes any JSON
/// (arrays, `[]`, scalars), as text, sometimes cut short.
fn live_text() -> impl Strategy<Value = String> {
    let units = prop::collection::btree_map(selector_text(), prop_oneof![8 => live_unit(), 1 => json_value()], 0..6);
    let lists = prop::collection::vec(selector_text(), 0..3);
    // The kernel's fields: names shaped like the kernel's, or not.
    let word = prop_oneof![3 => "[a-z0-9._+~-]{1,12}", 1 => selector_text(), 1 => "[a-z]{65}"];
    let modules = prop::collection::btree_map(
        word.clone(),
        prop_oneof![3 => prop::option::of(word.clone()).prop_map(|v| json!({ "version": v })), 1 => json_value()],
        0..4,
    );
    let kernel = (prop::option::of(word.clone()), prop::option::of(word), modules, prop::option::of(json_value()));
    let shaped = (units, lists.clone(), lists, prop::option::of(selector_text()), kernel).prop_map(
        |(units, restart, pending, exe, (release, booted, loaded, marker))| {
            let mut state = json!({ "units": units, "activation_restart_list": restart, "pending_start": pending });
            if let Some(exe) = exe {
                state["manager_exe"] = json!(exe);
            }
            if let Some(release) = release {
                state["kernel_release"] = json!(release);
            }
            if let Some(booted) = booted {
                state["booted_kernel_modules"] = json!(format!("/nix/store/{booted}"));
            }
            if !loaded.is_empty() {
                state["loaded_modules"] = json!(loaded);
            }
            if let Some(marker) = marker {
                state["reboot_required"] = marker;
            }
            state
        },
    );
    let value = prop_oneof![6 => shaped, 1 => json_value(), 1 => Just(json!([])), 1 => Just(json!([{}, []]))];
    (value, any::<bool>(), 0..100usize).prop_map(|(value, cut, at)| {
        let text = serde_json::to_string_pretty(&value).unwrap();
        if cut {
            let mut end = text.len() * at / 100;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        } else {
            text
        }
    })
}

#[test]
fn live_states_parse_without_panic_and_round_trip() {
    fuzz::check("live states", 1024, live_text(), |text| {
        let (result, peak) = peak_memory(|| LiveState::from_json(&text));
        prop_assert!(peak <= memory_bound(text.len()), "{peak} bytes for {} bytes of JSON", text.len());
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        match result {
            Ok(live) => {
                prop_assert!(parsed.as_ref().is_ok_and(Value::is_object), "only a JSON object is a live state");
                let again = LiveState::from_json(&serde_json::to_string(&live).unwrap()).unwrap();
                prop_assert_eq!(again, live);
            }
            Err(err) => prop_assert!(err.to_string().len() <= 8 * text.len() + 512),
        }
        Ok(())
    });
}

const DEFERRAL_FIELDS: &[&str] =
    &["manager", "unit", "actions", "from", "generation", "invocation", "since_unix", "reasons", "touch"];

/// A field of a pending deferral: mostly of the right type, sometimes not.
fn deferral_field(field: &str) -> BoxedStrategy<Value> {
    let right: BoxedStrategy<Value> = match field {
        "manager" => select(&["systemd", "launchd", ""]).prop_map(Value::from).boxed(),
        "actions" => prop::collection::vec(select(&["stop", "start", "restart", "reload", "skip", "kill"]), 0..4)
            .prop_map(|v| json!(v))
            .boxed(),
        "since_unix" => any::<u64>().prop_map(Value::from).boxed(),
        "reasons" => prop::collection::vec(select(&["unit-changed", "stop-start", "bogus"]), 0..3)
            .prop_map(|v| json!(v.iter().map(|r| json!({ "rule": r })).collect::<Vec<_>>()))
            .boxed(),
        "touch" => (selector_text(), select(&["stop", "restart", "x"]), prop::collection::vec(selector_text(), 0..3))
            .prop_map(|(t, effect, chain)| {
                let chain: Vec<Value> =
                    chain.iter().map(|c| json!({ "from": c, "relation": "Requires", "to": t })).collect();
                json!({ "touches": t, "effect": effect, "chain": chain })
            })
            .boxed(),
        _ => selector_text().prop_map(Value::from).boxed(),
    };
    prop_oneof![6 => right, 1 => json_value(), 1 => Just(json!(-1))].boxed()
}

/// A record of pending deferrals: mostly shaped like one (every field,
/// or some), sometimes any JSON, as text, sometimes cut short.
fn pending_text() -> impl Strategy<Value = String> {
    let all = Just(DEFERRAL_FIELDS.to_vec());
    let some = prop::collection::vec(prop::sample::select(DEFERRAL_FIELDS), 0..9);
    let deferral = prop_oneof![3 => all, 1 => some]
        .prop_flat_map(|names| {
            names
                .into_iter()
                .map(|n| deferral_field(n).prop_map(move |v| (n.to_owned(), v)).boxed())
                .collect::<Vec<BoxedStrategy<(String, Value)>>>()
        })
        .prop_map(|fields| Value::Object(fields.into_iter().collect()));
    let deferrals = prop::collection::vec(prop_oneof![8 => deferral, 1 => json_value()], 0..6);
    let shaped = (deferrals, prop_oneof![4 => Just(json!(1)), 1 => json_value()])
        .prop_map(|(deferrals, version)| json!({ "format_version": version, "deferrals": deferrals }));
    let value = prop_oneof![6 => shaped, 1 => json_value(), 1 => Just(json!([]))];
    (value, any::<bool>(), 0..100usize).prop_map(|(value, cut, at)| {
        let text = serde_json::to_string_pretty(&value).unwrap();
        let mut end = if cut { text.len() * at / 100 } else { text.len() };
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    })
}

#[test]
fn pending_records_parse_without_panic_and_round_trip() {
    fuzz::check("pending records", 1024, pending_text(), |text| {
        let (result, peak) = peak_memory(|| Pending::from_json(&text));
        prop_assert!(peak <= memory_bound(text.len()), "{peak} bytes for {} bytes of JSON", text.len());
        match result {
            Ok(pending) => {
                prop_assert_eq!(Pending::from_json(&pending.to_json()).unwrap(), pending.clone());
                // Checked, for each manager, against a live state that
                // knows none of its units: everything is dropped, nothing
                // panics.
                let systemd = pending.checked(Manager::Systemd, &LiveState::default());
                let launchd = systemd.pending.checked(Manager::Launchd, &LiveState::default());
                prop_assert!(launchd.pending.is_empty());
                prop_assert_eq!(systemd.earlier.len() + launchd.earlier.len(), pending.deferrals.len());
            }
            Err(err) => prop_assert!(err.to_string().len() <= 8 * text.len() + 512),
        }
        Ok(())
    });
}

/// Nesting far deeper than any real input: serde_json's and toml's
/// recursion limits must turn it into an error, not a stack overflow.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 20_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let objects = format!("{}{}", "{\"units\":".repeat(depth), "}".repeat(depth));
        for text in [&arrays, &objects] {
            assert!(LiveState::from_json(text).is_err(), "depth {depth}");
            assert!(Pending::from_json(text).is_err(), "depth {depth}");
        }
        for text in [format!("protect = {arrays}"), format!("mode = {}1{}", "{a=".repeat(depth), "}".repeat(depth))] {
            assert!(Policy::parse(&text).is_err(), "depth {depth}");
        }
    }
}

#[test]
fn unit_name_helpers_do_not_panic() {
    let name = prop_oneof![selector_text(), "[a-z/.\\\\%@-]{0,20}", any::<String>()];
    fuzz::check("unit names", 1024, (name.clone(), name), |(value, unit)| {
        let _ = (unit_name::unit_type(&unit), unit_name::stem(&unit), unit_name::is_template(&unit));
        let _ = (unit_name::split_instance(&unit), unit_name::is_valid(&unit));
        if let Some(expanded) = unit_name::expand_specifiers(&value, &unit) {
            // Each two-byte specifier is replaced by at most the unit name.
            prop_assert!(expanded.len() <= value.len() * (unit.len() + 1) + 1);
        }
        let escaped = unit_name::escape_path(&value);
        prop_assert!(escaped.len() <= 4 * value.len() + 4);
        prop_assert!(!escaped.contains('/'));
        prop_assert!(unit_name::unescape(&unit).len() <= unit.len());
        Ok(())
    });
}

/// A policy of 100,000 entries (600 kB) parses in a fraction of a second.
/// Finding each entry's line by counting the newlines before it took
/// minutes (quadratic time), a hang for a file the user controls.
#[test]
fn a_long_policy_parses_in_linear_time() {
    let text = format!("protect = [\n{}]\n", "\"a\",\n".repeat(100_000));
    let started = std::time::Instant::now();
    let policy = Policy::parse(&text).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(policy.protect.len(), 100_000);
    assert_eq!(policy.protect.last().map(|(_, line)| *line), Some(100_001));
    // Linear parsing takes well under a second even in a debug build; the
    // quadratic one took over two minutes.
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}
