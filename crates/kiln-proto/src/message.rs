//! The protocol's messages, both directions.

use rmpv::Value;

use crate::args::Args;
use crate::args::WorkerSettings;
use crate::update::UpdateItem;

/// One decoded WebSocket message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request: `seq_number` is the sender's own counter, echoed in the response.
    Request {
        seq_number: i64,
        op: Op,
    },
    Response(Response),
}

/// The answer to a request. `result` is a string message when `is_exception`.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub seq_number: i64,
    pub result: Value,
    pub is_exception: bool,
}

impl Response {
    /// A successful response with a nil result (the answer to almost every op).
    pub fn ok(seq_number: i64) -> Response {
        Response {
            seq_number,
            result: Value::Nil,
            is_exception: false,
        }
    }

    /// A successful response carrying a value.
    pub fn with_result(seq_number: i64, result: Value) -> Response {
        Response {
            seq_number,
            result,
            is_exception: false,
        }
    }

    /// A failure response; the text is what the peer logs and shows.
    pub fn error(seq_number: i64, message: impl Into<String>) -> Response {
        Response {
            seq_number,
            result: Value::from(message.into()),
            is_exception: true,
        }
    }

    /// The failure text, if this response is an exception.
    pub fn error_text(&self) -> Option<String> {
        self.is_exception
            .then(|| crate::value::text_of(&self.result).unwrap_or_else(|| self.result.to_string()))
    }
}

/// Every request op, master→worker first, then worker→master.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    // --- master → worker ---
    /// Write `message` to the worker log ("attached", "ping", duplicate probes).
    Print {
        message: String,
    },
    Keepalive,
    GetWorkerInfo,
    SetWorkerSettings(WorkerSettings),
    /// Start a command; results follow as `Update`s and one `Complete`.
    StartCommand {
        builder_name: Option<String>,
        command_id: String,
        command_name: String,
        args: Args,
    },
    InterruptCommand {
        builder_name: Option<String>,
        command_id: String,
        why: String,
    },
    Shutdown,

    // --- worker → master ---
    Update {
        command_id: String,
        items: Vec<UpdateItem>,
    },
    /// `failure` is nil when the command ran to completion, whatever its rc.
    Complete {
        command_id: String,
        failure: Option<String>,
    },
    UploadFileWrite {
        command_id: String,
        data: Vec<u8>,
    },
    UploadFileClose {
        command_id: String,
    },
    UploadFileUtime {
        command_id: String,
        access_time: f64,
        modified_time: f64,
    },
    UploadDirectoryWrite {
        command_id: String,
        data: Vec<u8>,
    },
    UploadDirectoryUnpack {
        command_id: String,
    },
    /// Ask for up to `length` bytes of a download; the response carries them as bin.
    ReadFile {
        command_id: String,
        length: u64,
    },
    ReadFileClose {
        command_id: String,
    },

    /// An op this side does not know; answer with [`Op::unknown_error`].
    Unknown {
        op: String,
    },
}

impl Op {
    /// The op name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Op::Print { .. } => "print",
            Op::Keepalive => "keepalive",
            Op::GetWorkerInfo => "get_worker_info",
            Op::SetWorkerSettings(_) => "set_worker_settings",
            Op::StartCommand { .. } => "start_command",
            Op::InterruptCommand { .. } => "interrupt_command",
            Op::Shutdown => "shutdown",
            Op::Update { .. } => "update",
            Op::Complete { .. } => "complete",
            Op::UploadFileWrite { .. } => "update_upload_file_write",
            Op::UploadFileClose { .. } => "update_upload_file_close",
            Op::UploadFileUtime { .. } => "update_upload_file_utime",
            Op::UploadDirectoryWrite { .. } => "update_upload_directory_write",
            Op::UploadDirectoryUnpack { .. } => "update_upload_directory_unpack",
            Op::ReadFile { .. } => "update_read_file",
            Op::ReadFileClose { .. } => "update_read_file_close",
            Op::Unknown { op } => op,
        }
    }

    /// The text Buildbot answers an unknown op with.
    pub fn unknown_error(op: &str) -> String {
        format!("Command {op} does not exist.")
    }

    /// Whether a master sends this op (false: a worker sends it).
    pub fn is_master_to_worker(&self) -> bool {
        matches!(
            self,
            Op::Print { .. }
                | Op::Keepalive
                | Op::GetWorkerInfo
                | Op::SetWorkerSettings(_)
                | Op::StartCommand { .. }
                | Op::InterruptCommand { .. }
                | Op::Shutdown
        )
    }
}
