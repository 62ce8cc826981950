//! Unit files, read the way systemd reads them.
//!
//! A [`UnitFile`] is the merged view of one unit: its fragment followed by
//! its drop-ins, folded into `section → key → values`. The folding follows
//! `systemd.syntax(7)` and `systemd.unit(5)`:
//!
//! - `[Section]` headers open a section; repeated headers merge in order.
//! - Repeated keys accumulate values; an empty assignment (`Key=`) clears
//!   everything assigned before it, in this file and in earlier files.
//! - Comments are whole lines whose first non-blank character is `#` or
//!   `;`. A `#` or `;` inside a value is part of the value, and so are
//!   quotes: systemd hands the raw value to each key's own parser.
//! - A line ending in an odd number of backslashes continues on the next
//!   line; the backslash becomes a space. Comment lines inside a continued
//!   value are skipped, as systemd does.
//! - Assignments before the first section header are ignored, as systemd
//!   ignores them (with a warning).
//! - A line that is neither a comment, a section header nor `key=value`
//!   is an error naming the file and line: systemd refuses to load such a
//!   unit, so the planner must not guess. The error quotes at most
//!   [`QUOTED_LINE`] characters of the line.
//! - A UTF-8 byte-order mark at the start of a file is skipped, as systemd
//!   skips it.
//!
//! This module does no IO: the loader reads the bytes and hands them here.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plan_model::unit_name;

/// The most characters of a line that a [`ParseError`] quotes.
pub const QUOTED_LINE: usize = 80;

/// The section and key names most units use, sorted. A unit's settings
/// refer to these by number instead of holding a copy; other names are
/// kept with the unit's values.
#[rustfmt::skip]
const NAMES: &[&str] = &[
    "Accept", "AccuracySec", "After", "Alias", "AllowIsolate", "AllowedCPUs", "AllowedMemoryNodes", "Also",
    "AmbientCapabilities", "AppArmorProfile", "AssertFileIsExecutable", "AssertPathExists", "AssertPathIsDirectory",
    "AssertSecurity", "AssertVirtualization", "Automount", "BPFProgram", "Backlog", "Before", "BindIPv6Only",
    "BindPaths", "BindReadOnlyPaths", "BindToDevice", "BindsTo", "BlockIOAccounting", "BlockIOWeight", "Broadcast",
    "BusName", "CPUAccounting", "CPUAffinity", "CPUQuota", "CPUQuotaPeriodSec", "CPUSchedulingPolicy",
    "CPUSchedulingPriority", "CPUSchedulingResetOnFork", "CPUShares", "CPUWeight", "CacheDirectory",
    "CacheDirectoryMode", "CapabilityBoundingSet", "CollectMode", "ConditionACPower", "ConditionArchitecture",
    "ConditionCPUFeature", "ConditionCPUPressure", "ConditionCPUs", "ConditionCapability",
    "ConditionControlGroupController", "ConditionCredential", "ConditionDirectoryNotEmpty", "ConditionEnvironment",
    "ConditionFileIsExecutable", "ConditionFileNotEmpty", "ConditionFirmware", "ConditionFirstBoot", "ConditionGroup",
    "ConditionHost", "ConditionIOPressure", "ConditionKernelCommandLine", "ConditionKernelVersion", "ConditionMemory",
    "ConditionMemoryPressure", "ConditionNeedsUpdate", "ConditionOSRelease", "ConditionPathExists",
    "ConditionPathExistsGlob", "ConditionPathIsDirectory", "ConditionPathIsEncrypted", "ConditionPathIsMountPoint",
    "ConditionPathIsReadWrite", "ConditionPathIsSymbolicLink", "ConditionSecurity", "ConditionUser",
    "ConditionVirtualization", "ConfigurationDirectory", "ConfigurationDirectoryMode", "Conflicts", "CoredumpFilter",
    "DefaultDependencies", "DefaultInstance", "DeferAcceptSec", "Delegate", "DelegateSubgroup", "Description",
    "DeviceAllow", "DevicePolicy", "DirectoryMode", "DirectoryNotEmpty", "DisableControllers", "Documentation",
    "DynamicUser", "Environment", "EnvironmentFile", "ExecCondition", "ExecPaths", "ExecReload", "ExecSearchPath",
    "ExecStart", "ExecStartPost", "ExecStartPre", "ExecStop", "ExecStopPost", "ExecStopPre", "ExitType",
    "ExtensionDirectories", "ExtensionImages", "ExtraOptions", "FailureAction", "FailureActionExitStatus",
    "FileDescriptorName", "FileDescriptorStoreMax", "FileDescriptorStorePreserve", "FinalKillSignal",
    "FixedRandomDelay", "FlushPending", "ForceUnmount", "FreeBind", "Group", "GuessMainPID", "IOAccounting",
    "IODeviceLatencyTargetSec", "IODeviceWeight", "IOReadBandwidthMax", "IOReadIOPSMax", "IOSchedulingClass",
    "IOSchedulingPriority", "IOWeight", "IOWriteBandwidthMax", "IOWriteIOPSMax", "IPAccounting", "IPAddressAllow",
    "IPAddressDeny", "IPCNamespacePath", "IPEgressFilterPath", "IPIngressFilterPath", "IPTOS", "IPTTL",
    "IgnoreOnIsolate", "IgnoreSIGPIPE", "ImportCredential", "InaccessiblePaths", "Install", "JobRunningTimeoutSec",
    "JobTimeoutAction", "JobTimeoutRebootArgument", "JobTimeoutSec", "JoinsNamespaceOf", "KeepAlive",
    "KeepAliveIntervalSec", "KeepAliveProbes", "KeepAliveTimeSec", "KeyringMode", "KillMode", "KillSignal",
    "LazyUnmount", "LimitAS", "LimitCORE", "LimitCPU", "LimitDATA", "LimitFSIZE", "LimitLOCKS", "LimitMEMLOCK",
    "LimitMSGQUEUE", "LimitNICE", "LimitNOFILE", "LimitNPROC", "LimitRSS", "LimitRTPRIO", "LimitRTTIME",
    "LimitSIGPENDING", "LimitSTACK", "ListenDatagram", "ListenFIFO", "ListenMessageQueue", "ListenNetlink",
    "ListenSequentialPacket", "ListenSpecial", "ListenStream", "ListenUSBFunction", "LoadCredential",
    "LoadCredentialEncrypted", "LockPersonality", "LogExtraFields", "LogFilterPatterns", "LogLevelMax", "LogNamespace",
    "LogRateLimitBurst", "LogRateLimitIntervalSec", "LogsDirectory", "LogsDirectoryMode", "MakeDirectory",
    "ManagedOOMMemoryPressure", "ManagedOOMMemoryPressureLimit", "ManagedOOMPreference", "ManagedOOMSwap", "Mark",
    "MaxConnections", "MaxConnectionsPerSource", "MemoryAccounting", "MemoryDenyWriteExecute", "MemoryHigh",
    "MemoryLimit", "MemoryLow", "MemoryMax", "MemoryMin", "MemoryPressureThresholdSec", "MemoryPressureWatch",
    "MemorySwapMax", "MemoryZSwapMax", "MessageQueueMaxMessages", "MessageQueueMessageSize", "Mount", "MountAPIVFS",
    "MountFlags", "MountImages", "NUMAMask", "NUMAPolicy", "NetworkNamespacePath", "Nice", "NoDelay", "NoExecPaths",
    "NoNewPrivileges", "NonBlocking", "NotifyAccess", "OOMPolicy", "OOMScoreAdjust", "OnActiveSec", "OnBootSec",
    "OnCalendar", "OnClockChange", "OnFailure", "OnFailureJobMode", "OnStartupSec", "OnSuccess", "OnSuccessJobMode",
    "OnTimezoneChange", "OnUnitActiveSec", "OnUnitInactiveSec", "OpenFile", "Options", "PAMName", "PIDFile", "PartOf",
    "PassCredentials", "PassEnvironment", "PassPacketInfo", "PassSecurity", "Path", "PathChanged", "PathExists",
    "PathExistsGlob", "PathModified", "Persistent", "Personality", "PipeSize", "PollLimitBurst",
    "PollLimitIntervalSec", "Priority", "PrivateDevices", "PrivateIPC", "PrivateMounts", "PrivateNetwork",
    "PrivateTmp", "PrivateUsers", "ProcSubset", "PropagatesReloadTo", "PropagatesStopTo", "ProtectClock",
    "ProtectControlGroups", "ProtectHome", "ProtectHostname", "ProtectKernelLogs", "ProtectKernelModules",
    "ProtectKernelTunables", "ProtectProc", "ProtectSystem", "RandomizedDelaySec", "ReadOnlyPaths", "ReadWriteOnly",
    "ReadWritePaths", "RebootArgument", "ReceiveBuffer", "RefuseManualStart", "RefuseManualStop",
    "ReloadPropagatedFrom", "ReloadSignal", "RemainAfterElapse", "RemainAfterExit", "RemoveIPC", "RemoveOnStop",
    "RequiredBy", "Requires", "RequiresMountsFor", "Requisite", "Restart", "RestartForceExitStatus",
    "RestartKillSignal", "RestartMaxDelaySec", "RestartMode", "RestartPreventExitStatus", "RestartSec", "RestartSteps",
    "RestrictAddressFamilies", "RestrictFileSystems", "RestrictNamespaces", "RestrictNetworkInterfaces",
    "RestrictRealtime", "RestrictSUIDSGID", "ReusePort", "RootDirectory", "RootDirectoryStartOnly", "RootHash",
    "RootImage", "RootImageOptions", "RootVerity", "RuntimeDirectory", "RuntimeDirectoryMode",
    "RuntimeDirectoryPreserve", "RuntimeMaxSec", "RuntimeRandomizedExtraSec", "SELinuxContext",
    "SELinuxContextFromNet", "Scope", "SecureBits", "SendBuffer", "SendSIGHUP", "SendSIGKILL", "Service",
    "SetCredential", "SetCredentialEncrypted", "Slice", "SloppyOptions", "SmackLabel", "SmackLabelIPIn",
    "SmackLabelIPOut", "SmackProcessLabel", "Socket", "SocketBindAllow", "SocketBindDeny", "SocketGroup", "SocketMode",
    "SocketProtocol", "SocketUser", "Sockets", "SourcePath", "StandardError", "StandardInput", "StandardInputData",
    "StandardInputText", "StandardOutput", "StartLimitAction", "StartLimitBurst", "StartLimitIntervalSec",
    "StartupAllowedCPUs", "StartupAllowedMemoryNodes", "StartupCPUShares", "StartupCPUWeight", "StartupIOWeight",
    "StateDirectory", "StateDirectoryMode", "StopPropagatedFrom", "StopWhenUnneeded", "SuccessAction",
    "SuccessActionExitStatus", "SuccessExitStatus", "SupplementaryGroups", "SurviveFinalKillSignal", "Swap",
    "Symlinks", "SyslogFacility", "SyslogIdentifier", "SyslogLevel", "SyslogLevelPrefix", "SystemCallArchitectures",
    "SystemCallErrorNumber", "SystemCallFilter", "SystemCallLog", "TCPCongestion", "TTYColumns", "TTYPath", "TTYReset",
    "TTYRows", "TTYVHangup", "TTYVTDisallocate", "TasksAccounting", "TasksMax", "TemporaryFileSystem",
    "TimeoutAbortSec", "TimeoutCleanSec", "TimeoutIdleSec", "TimeoutSec", "TimeoutStartFailureMode", "TimeoutStartSec",
    "TimeoutStopFailureMode", "TimeoutStopSec", "Timer", "TimerSlackNSec", "Timestamping", "Transparent",
    "TriggerLimitBurst", "TriggerLimitIntervalSec", "Type", "UMask", "USBFunctionDescriptors", "USBFunctionStrings",
    "Unit", "UnsetEnvironment", "UpheldBy", "Upholds", "User", "UtmpIdentifier", "UtmpMode", "WakeSystem", "WantedBy",
    "Wants", "WantsMountsFor", "WatchdogSec", "WatchdogSignal", "What", "Where", "WorkingDirectory", "Writable",
    "X-NotSocketActivated", "X-OnlyManualStart", "X-Reload-Triggers", "X-ReloadIfChanged", "X-Restart-Triggers",
    "X-RestartIfChanged", "X-StopIfChanged", "X-StopOnReconfiguration", "X-StopOnRemoval", "X-SwitchMethod",
];

/// A section or key name: one of [`NAMES`] (`len` is [`KNOWN`]), or a
/// range of the settings' text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Name {
    at: u32,
    len: u32,
}

/// The `len` of a [`Name`] that is one of [`NAMES`].
const KNOWN: u32 = u32::MAX;

/// One key of one section, with its values: a range of the settings'
/// text, the values separated by newlines (no value holds one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    section: Name,
    key: Name,
    start: u32,
    end: u32,
}

/// A unit's settings, folded from its files: every `section → key →
/// values`, sorted by section and key. One block of text holds every
/// value and the names that are not among the common ones, and one list
/// says which key of which section has which of them: a planned host has
/// thousands of units, and a map of strings per section and per key would
/// take several times the memory, in dozens of allocations per unit.
///
/// Two settings with the same content have the same form, so they compare
/// equal exactly when their content is equal.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Settings {
    text: Box<str>,
    entries: Box<[Entry]>,
}

impl Settings {
    fn name(&self, name: Name) -> &str {
        if name.len == KNOWN {
            return NAMES.get(name.at as usize).copied().unwrap_or_default();
        }
        self.text.get(name.at as usize..name.at as usize + name.len as usize).unwrap_or_default()
    }

    fn values_of(&self, entry: &Entry) -> Values<'_> {
        Values(self.text.get(entry.start as usize..entry.end as usize).unwrap_or_default())
    }

    /// The entries of `section`, which are next to each other.
    fn section_entries(&self, section: &str) -> &[Entry] {
        let start = self.entries.partition_point(|e| self.name(e.section) < section);
        let rest = self.entries.get(start..).unwrap_or_default();
        let len = rest.partition_point(|e| self.name(e.section) == section);
        rest.get(..len).unwrap_or_default()
    }

    /// Iterates over the sections in name order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, Section<'_>)> {
        self.entries
            .chunk_by(|a, b| a.section == b.section)
            .map(|entries| (entries.first().map_or("", |e| self.name(e.section)), Section { settings: self, entries }))
    }

    /// Returns one section; `None` when it has no keys.
    pub fn section(&self, section: &str) -> Option<Section<'_>> {
        let entries = self.section_entries(section);
        (!entries.is_empty()).then_some(Section { settings: self, entries })
    }

    /// Returns every value of `key` in `section`; empty when there is none.
    pub fn values(&self, section: &str, key: &str) -> Values<'_> {
        self.section(section).and_then(|s| s.get(key)).unwrap_or_default()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.sections()).finish()
    }
}

/// The keys of one section of a unit's [`Settings`], each with its values,
/// in key order.
#[derive(Clone, Copy)]
pub struct Section<'a> {
    settings: &'a Settings,
    entries: &'a [Entry],
}

impl<'a> Section<'a> {
    /// The values of `key`; `None` when the section does not have it.
    pub fn get(&self, key: &str) -> Option<Values<'a>> {
        let i = self.entries.binary_search_by(|e| self.settings.name(e.key).cmp(key)).ok()?;
        self.entries.get(i).map(|e| self.settings.values_of(e))
    }

    /// The keys with their values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Values<'a>)> + use<'a> {
        let settings = self.settings;
        self.entries.iter().map(move |e| (settings.name(e.key), settings.values_of(e)))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Tells whether there are none (never, for a section of a unit).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialEq for Section<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Section<'_> {}

impl fmt::Debug for Section<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The values of one key, in assignment order (after resets). A key a
/// unit has holds at least one value, none of them empty.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Values<'a>(&'a str);

impl<'a> Values<'a> {
    /// Iterates over the values, first assigned first.
    pub fn iter(&self) -> std::iter::Flatten<std::option::IntoIter<std::str::Split<'a, char>>> {
        (!self.0.is_empty()).then(|| self.0.split('\n')).into_iter().flatten()
    }

    /// The last value: what systemd uses for a single-valued setting.
    pub fn last(&self) -> Option<&'a str> {
        self.0.rsplit('\n').next().filter(|v| !v.is_empty())
    }

    /// How many values.
    pub fn len(&self) -> usize {
        if self.0.is_empty() { 0 } else { self.0.bytes().filter(|&b| b == b'\n').count() + 1 }
    }

    /// Tells whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values as a vector.
    pub fn to_vec(&self) -> Vec<&'a str> {
        self.iter().collect()
    }
}

impl<'a> IntoIterator for Values<'a> {
    type Item = &'a str;
    type IntoIter = std::iter::Flatten<std::option::IntoIter<std::str::Split<'a, char>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Values<'_> {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.iter().eq(other.iter().copied())
    }
}

impl fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A syntax error in a unit file or drop-in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}", path = path.display())]
pub struct ParseError {
    /// The file, as found in the generation.
    pub path: PathBuf,
    /// The 1-based line number (the first line of a continued value).
    pub line: u32,
    /// What is wrong with the line.
    pub message: String,
}

/// A syntax error at a line of a text; [`LineError::at`] names the file.
#[derive(Debug)]
pub(crate) struct LineError {
    line: u32,
    message: String,
}

impl LineError {
    /// The error, in the file at `path`.
    pub(crate) fn at(self, path: &Path) -> ParseError {
        ParseError { path: path.to_owned(), line: self.line, message: self.message }
    }
}

/// One unit as systemd would load it: fragment plus drop-ins, merged.
///
/// A unit is known by its name in its generation
/// ([`crate::GenerationUnits::unit_with_name`]): its files are named
/// after it, relative to the unit directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitFile {
    /// The settings, folded from the unit's files ([`Folding`]).
    pub(crate) settings: Arc<Settings>,
    /// The fragment's text as the loader read it.
    pub(crate) text: Option<Arc<str>>,
    pub(crate) fragment: Option<Fragment>,
    /// Every drop-in applied, in the order applied.
    pub(crate) drop_ins: Box<[DropIn]>,
    pub(crate) masked: bool,
}

/// Which file is a unit's fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// The unit's own (`<name>`).
    Own,
    /// For an instance, its template's (`foo@.service` for
    /// `foo@bar.service`).
    Template,
}

/// A drop-in of a unit: a file of the unit's own `<name>.d/` directory, or
/// for an instance of its template's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropIn {
    pub(crate) file: Box<str>,
    pub(crate) own: bool,
    pub(crate) text: Arc<str>,
}

impl DropIn {
    /// The file's name in its directory (`10-override.conf`).
    pub fn file_name(&self) -> &str {
        &self.file
    }

    /// Tells whether the drop-in is in the unit's own directory (for an
    /// instance: not the template's).
    pub fn is_own(&self) -> bool {
        self.own
    }

    /// The file's text, exactly as the loader read and parsed it.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A unit's files being folded into its settings, one after the other.
/// Names and values are borrowed from the files' texts where they are
/// written on one line.
#[derive(Debug, Default)]
pub(crate) struct Folding<'t> {
    sections: BTreeMap<Cow<'t, str>, Keys<'t>>,
    /// The bytes of text folded in so far: the settings hold at most as
    /// many, and address them with 32 bits.
    bytes: usize,
}

/// A section's keys being folded, each with its values.
type Keys<'t> = BTreeMap<Cow<'t, str>, Vec<Cow<'t, str>>>;

/// What one line of a unit file says, as ranges of the line.
enum Line {
    Empty,
    Header(Range<usize>),
    Assignment { key: Range<usize>, value: Range<usize> },
}

impl UnitFile {
    /// Parses a single file's text as a unit whose fragment it is (for
    /// tests and tools; the loader merges drop-ins with [`Folding`]).
    /// `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<UnitFile, ParseError> {
        let mut folding = Folding::default();
        folding.apply(text).map_err(|err| err.at(path))?;
        Ok(UnitFile { settings: folding.finish(), fragment: Some(Fragment::Own), ..UnitFile::default() })
    }

    /// Which file is the unit's fragment; `None` for a masked unit.
    pub fn fragment(&self) -> Option<Fragment> {
        self.fragment
    }

    /// The fragment's file name in the unit directory, for the unit
    /// known as `name`: `name`, or its template's name.
    pub fn fragment_name<'a>(&self, name: &'a str) -> Option<Cow<'a, str>> {
        match self.fragment? {
            Fragment::Own => Some(Cow::Borrowed(name)),
            Fragment::Template => unit_name::split_instance(name).map(|(template, _)| Cow::Owned(template)),
        }
    }

    /// The fragment's text as the loader read it; `None` for a masked
    /// unit, and for one parsed from a text ([`UnitFile::parse`]).
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Every drop-in applied, in the order applied.
    pub fn drop_ins(&self) -> &[DropIn] {
        &self.drop_ins
    }

    /// The drop-ins from the unit's own `<name>.d/` directory (for an
    /// instance: not the template's), in the order applied.
    pub fn own_drop_ins(&self) -> impl Iterator<Item = &DropIn> {
        self.drop_ins.iter().filter(|d| d.own)
    }

    /// Tells whether the unit is masked (its fragment links to `/dev/null`).
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    /// Tells whether two units have the same settings (their names, paths
    /// and masks aside). Units of two generations made of the same files
    /// share their parsed settings, which makes this one comparison.
    pub fn same_settings(&self, other: &UnitFile) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings) || self.settings == other.settings
    }

    /// The unit's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Iterates over the sections in name order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, Section<'_>)> {
        self.settings.sections()
    }

    /// Returns one section.
    pub fn section(&self, section: &str) -> Option<Section<'_>> {
        self.settings.section(section)
    }

    /// Returns every value assigned to `key` in `section`, after resets;
    /// empty when the key is absent.
    pub fn values(&self, section: &str, key: &str) -> Values<'_> {
        self.settings.values(section, key)
    }

    /// Returns the last value of `key` in `section`: what systemd uses for a
    /// single-valued setting.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).last()
    }

    /// Returns the whitespace-separated words of every value of `key`, as
    /// systemd reads list settings such as `Requires=` or `Sockets=`.
    pub fn words(&self, section: &str, key: &str) -> Vec<&str> {
        self.values(section, key).iter().flat_map(str::split_whitespace).collect()
    }

    /// Returns a boolean setting as systemd parses booleans
    /// (`parse_boolean`: `1 yes y true t on` and `0 no n false f off`, in
    /// any case). `None` when the key is absent or the value is not a
    /// boolean (systemd ignores such an assignment and keeps the default).
    pub fn get_bool(&self, section: &str, key: &str) -> Option<bool> {
        self.get(section, key).and_then(parse_boolean)
    }

    /// Returns a boolean setting, or `default` when absent or invalid.
    pub fn bool_or(&self, section: &str, key: &str, default: bool) -> bool {
        self.get_bool(section, key).unwrap_or(default)
    }
}

impl<'t> Folding<'t> {
    /// Folds one file's text in.
    pub(crate) fn apply(&mut self, text: &'t str) -> Result<(), LineError> {
        self.bytes = self.bytes.saturating_add(text.len());
        if u32::try_from(self.bytes).is_err() {
            return Err(LineError { line: 1, message: "the unit's files hold more than 4 GiB".to_owned() });
        }
        let mut section: Option<Cow<'t, str>> = None;
        let mut continued: Option<(String, u32)> = None;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.split('\n').enumerate() {
            let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let start = raw.trim_start();
            if start.starts_with('#') || start.starts_with(';') {
                continue;
            }
            if continued.is_none() && !ends_in_unescaped_backslash(raw) {
                // The common case: a line of its own, parsed in place.
                self.apply_line(&mut section, Cow::Borrowed(raw), number)?;
                continue;
            }
            let (mut line, first) = match continued.take() {
                Some((mut acc, first)) => {
                    acc.push_str(raw);
                    (acc, first)
                }
                None => (raw.to_owned(), number),
            };
            if ends_in_unescaped_backslash(&line) {
                line.pop();
                line.push(' ');
                continued = Some((line, first));
                continue;
            }
            self.apply_line(&mut section, Cow::Owned(line), first)?;
        }
        if let Some((line, first)) = continued {
            // A continuation at the end of the file: systemd keeps what came
            // before the backslash.
            self.apply_line(&mut section, Cow::Owned(line), first)?;
        }
        Ok(())
    }

    fn apply_line(
        &mut self,
        section: &mut Option<Cow<'t, str>>,
        line: Cow<'t, str>,
        number: u32,
    ) -> Result<(), LineError> {
        let parsed = parse_line(&line).map_err(|message| LineError { line: number, message })?;
        // A part of the line, borrowed from the file's text when the line is.
        let part = |range: Range<usize>| -> Cow<'t, str> {
            match &line {
                Cow::Borrowed(line) => Cow::Borrowed(line.get(range).unwrap_or_default()),
                Cow::Owned(line) => Cow::Owned(line.get(range).unwrap_or_default().to_owned()),
            }
        };
        match parsed {
            Line::Empty => {}
            Line::Header(name) => {
                let name = part(name);
                if !self.sections.contains_key(&*name) {
                    self.sections.insert(name.clone(), BTreeMap::new());
                }
                *section = Some(name);
            }
            Line::Assignment { key, value } => {
                let Some(section) = section else {
                    // systemd ignores assignments outside of any section.
                    return Ok(());
                };
                // Every section was inserted when its header was read.
                let Some(keys) = self.sections.get_mut(&**section) else { return Ok(()) };
                let values = match keys.get_mut(line.get(key.clone()).unwrap_or_default()) {
                    Some(values) => values,
                    None => keys.entry(part(key)).or_default(),
                };
                if value.is_empty() {
                    values.clear();
                } else {
                    values.push(part(value));
                }
            }
        }
        Ok(())
    }

    /// The settings folded. Keys that an empty assignment left without
    /// values are dropped, and sections left empty, so that `Key=`
    /// compares equal to no `Key` at all, as it does for systemd.
    pub(crate) fn finish(self) -> Arc<Settings> {
        let kept = |keys: &Keys<'t>| keys.values().any(|v| !v.is_empty());
        let own = |name: &str| if NAMES.binary_search(&name).is_ok() { 0 } else { name.len() };
        // Sized first, so that nothing is moved or shrunk afterwards.
        let (mut bytes, mut count) = (0, 0);
        for (section, keys) in self.sections.iter().filter(|(_, keys)| kept(keys)) {
            bytes += own(section);
            for (key, values) in keys.iter().filter(|(_, values)| !values.is_empty()) {
                count += 1;
                bytes += own(key) + values.iter().map(|v| v.len() + 1).sum::<usize>() - 1;
            }
        }
        let mut text = String::with_capacity(bytes);
        let mut entries = Vec::with_capacity(count);
        let offset = |text: &String| u32::try_from(text.len()).unwrap_or(u32::MAX);
        let name = |text: &mut String, name: &str| match NAMES.binary_search(&name) {
            Ok(i) => Name { at: u32::try_from(i).unwrap_or(u32::MAX), len: KNOWN },
            Err(_) => {
                let at = offset(text);
                text.push_str(name);
                Name { at, len: u32::try_from(name.len()).unwrap_or(u32::MAX) }
            }
        };
        for (section, keys) in self.sections.iter().filter(|(_, keys)| kept(keys)) {
            let section = name(&mut text, section);
            for (key, values) in keys.iter().filter(|(_, values)| !values.is_empty()) {
                let key = name(&mut text, key);
                let start = offset(&text);
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        text.push('\n');
                    }
                    text.push_str(value);
                }
                entries.push(Entry { section, key, start, end: offset(&text) });
            }
        }
        Arc::new(Settings { text: text.into_boxed_str(), entries: entries.into_boxed_slice() })
    }
}

/// Parses one line (continued lines joined): a section header, an
/// assignment, or nothing; an error message for anything else.
fn parse_line(line: &str) -> Result<Line, String> {
    let range = |part: &str| {
        let start = part.as_ptr() as usize - line.as_ptr() as usize;
        start..start + part.len()
    };
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(Line::Empty);
    }
    if let Some(rest) = trimmed.strip_prefix('[') {
        let name = rest
            .strip_suffix(']')
            .filter(|name| !name.is_empty() && !name.contains(['[', ']']))
            .ok_or_else(|| format!("invalid section header {}", quote(trimmed)))?;
        return Ok(Line::Header(range(name)));
    }
    let (key, value) = trimmed.split_once('=').ok_or_else(|| format!("missing '=' in {}", quote(trimmed)))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("missing key name in {}", quote(trimmed)));
    }
    Ok(Line::Assignment { key: range(key), value: range(value.trim()) })
}

/// A line quoted for an error: escaped, and cut after [`QUOTED_LINE`]
/// characters.
fn quote(line: &str) -> String {
    match line.char_indices().nth(QUOTED_LINE) {
        Some((end, _)) => format!("{:?}...", &line[..end]),
        None => format!("{line:?}"),
    }
}

/// Tells whether a line ends in a backslash that is not itself escaped.
fn ends_in_unescaped_backslash(line: &str) -> bool {
    let trailing = line.bytes().rev().take_while(|&b| b == b'\\').count();
    trailing % 2 == 1
}

/// Parses a boolean the way systemd's `parse_boolean` does.
pub fn parse_boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> UnitFile {
        UnitFile::parse(Path::new("t.service"), text).unwrap()
    }

    #[test]
    fn values_keep_hashes_semicolons_and_quotes() {
        let u = parse("[Service]\nExecStart=/bin/sh -c \"a ;b\" # not a comment\nEnvironment=\"A=1\" \"B=2\"\n");
        assert_eq!(u.values("Service", "ExecStart"), ["/bin/sh -c \"a ;b\" # not a comment"]);
        assert_eq!(u.get("Service", "Environment"), Some("\"A=1\" \"B=2\""));
    }

    #[test]
    fn empty_assignment_resets() {
        let u = parse("[Unit]\nAfter=a\nAfter=b\nAfter=\nAfter=c\nWants=x\nWants=\n");
        assert_eq!(u.values("Unit", "After"), ["c"]);
        assert!(u.values("Unit", "Wants").is_empty());
        assert!(u.section("Unit").unwrap().get("Wants").is_none());
    }

    #[test]
    fn continuation_and_comments() {
        let u = parse("[Service]\n  # comment\n; other\nExecStart=/bin/foo \\\n# skipped\n  --bar\nA=x\\\\\nB=y\n");
        assert_eq!(u.values("Service", "ExecStart"), ["/bin/foo    --bar"]);
        assert_eq!(u.values("Service", "A"), ["x\\\\"]);
        assert_eq!(u.values("Service", "B"), ["y"]);
    }

    #[test]
    fn garbage_names_file_and_line() {
        let err = UnitFile::parse(Path::new("dir/t.service"), "[Unit]\nDescription=x\nthis is garbage\n").unwrap_err();
        assert_eq!(err.to_string(), "dir/t.service:3: missing '=' in \"this is garbage\"");
        let err = UnitFile::parse(Path::new("t"), "[Unit\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_as_systemd_does() {
        let u = parse("\u{feff}[Unit]\nDescription=x\n");
        assert_eq!(u.get("Unit", "Description"), Some("x"));
        // Only at the start of the file.
        let err = UnitFile::parse(Path::new("t"), "[Unit]\n\u{feff}A=b\n\u{feff}x\n").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn errors_quote_a_bounded_part_of_the_line() {
        let long = format!("[Unit]\n{}\n", "é".repeat(5000));
        let err = UnitFile::parse(Path::new("t"), &long).unwrap_err();
        assert_eq!(err.message, format!("missing '=' in {:?}...", "é".repeat(QUOTED_LINE)));
        let err = UnitFile::parse(Path::new("t"), &format!("[{}\n", "x".repeat(500))).unwrap_err();
        assert!(err.message.len() < 120, "{}", err.message);
    }

    #[test]
    fn booleans_follow_systemd() {
        let u = parse("[Unit]\nA=True\nB=off\nC=maybe\n");
        assert_eq!(u.get_bool("Unit", "A"), Some(true));
        assert_eq!(u.get_bool("Unit", "B"), Some(false));
        assert_eq!(u.get_bool("Unit", "C"), None);
        assert!(u.bool_or("Unit", "D", true));
    }

    #[test]
    fn the_common_names_are_sorted_and_distinct() {
        assert!(NAMES.windows(2).all(|w| w[0] < w[1]), "NAMES must be sorted, without duplicates");
    }

    #[test]
    fn settings_keep_uncommon_names_and_compare_by_content() {
        let text =
            "[X-Own]\nZ-Key=1\nDescription=d\n[Unit]\nX-Mine=a\nX-Mine=b  c\nAfter=x\n[Service]\nExecStart=/bin/a\n";
        let u = parse(text);
        assert_eq!(
            format!("{:?}", u.settings()),
            r#"{"Service": {"ExecStart": ["/bin/a"]}, "Unit": {"After": ["x"], "X-Mine": ["a", "b  c"]}, "#.to_owned()
                + r#""X-Own": {"Description": ["d"], "Z-Key": ["1"]}}"#
        );
        assert_eq!(u.values("X-Own", "Z-Key"), ["1"]);
        assert_eq!(u.values("Unit", "X-Mine").len(), 2);
        assert_eq!(u.get("Unit", "X-Mine"), Some("b  c"));
        assert!(u.section("Install").is_none() && u.values("Unit", "Wants").is_empty());
        assert_eq!(u.values("Unit", "Wants").len(), 0);
        assert_eq!(u.section("X-Own").unwrap().len(), 2);
        assert_eq!(u.words("Unit", "X-Mine"), ["a", "b", "c"]);
        // The same content, written otherwise, is the same settings.
        let other = parse(
            "[Service]\nExecStart=/bin/a\n[Unit]\nAfter=x\nX-Mine=a\n[X-Own]\nZ-Key=1\nDescription=d\n[Unit]\nX-Mine=b\\\n c\n",
        );
        assert_eq!(u.settings(), other.settings());
        assert!(u.same_settings(&other));
        let different =
            parse("[Service]\nExecStart=/bin/a\n[Unit]\nAfter=x\nX-Mine=a b  c\n[X-Own]\nZ-Key=1\nDescription=d\n");
        assert_ne!(u.settings(), different.settings());
        assert_ne!(u.section("Unit"), different.section("Unit"));
        assert_eq!(u.section("X-Own"), different.section("X-Own"));
    }

    #[test]
    fn continued_names_and_values_are_kept_whole() {
        let u = parse("[Ser\\\nvice]\nExec\\\nStart=/bin/a \\\n--b\nX-Very\\\n-Own=1\n");
        assert_eq!(u.sections().map(|(s, _)| s).collect::<Vec<_>>(), ["Ser vice"]);
        assert_eq!(u.values("Ser vice", "Exec Start"), ["/bin/a  --b"]);
        assert_eq!(u.values("Ser vice", "X-Very -Own"), ["1"]);
    }

    #[test]
    fn assignments_outside_sections_are_ignored() {
        let u = parse("Foo=bar\n[Unit]\nA=b\n[Unit]\nC=d\n");
        assert_eq!(u.sections().count(), 1);
        assert_eq!(u.get("Unit", "C"), Some("d"));
    }
}
