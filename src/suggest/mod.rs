//! Policy from observed traffic (`porin policy suggest`) and a what-if
//! check of a candidate configuration against it (`porin policy whatif`).
//! Pure: the records come in as [`FlowView`](crate::flows::record::FlowView)s,
//! text goes out; `cmd::suggest` does the I/O.
//!
//! * [`observe`]: records → containers, host addresses, connection starts
//!   and HTTP requests (replies and non-policy drops left out);
//! * [`groups`]: the fewest label keys that tell the containers apart,
//!   one group per selector;
//! * [`paths`]: observed HTTP paths → exact and folded prefix rules;
//! * [`emit`]: the suggested configuration as commented YAML;
//! * [`whatif`]: replay against a candidate with the daemon's compiler and
//!   the datapath's decision code.

pub mod emit;
pub mod groups;
pub mod observe;
pub mod paths;
pub mod whatif;
