//! Tests against real TAP devices inside a private network namespace (see
//! `netns`); they need root and fail rather than skip without it.

mod guest;

use crate::virtio::testing::{frames, netns};

mod device;
mod malformed;
mod offload;
mod persist;
mod roundtrip;
mod rx;
mod tx;
