/*!
The pure core of Qingnuan, shared by the gateway agent and the server.

Nothing here does I/O: codecs turn bytes into values, the calendar turns instants
into seasons, nights and boundaries, and the wire types say what crosses MQTT.
The crate is `no_std` (with `alloc` for the batch vector) so the agent's read path
stays small; the `std` feature only adds policy-file parsing and the wall clock.

# Layout
- [`units`]: integer energy (Wh), power (W) and money (fen) newtypes, ids, and the
  exact kWh / yuan strings of the contract.
- [`dlt645`]: DL/T 645-2007 frames: builder, stream decoder, data formats.
- [`modbus`]: register maps of DIN-rail meters and value decoding.
- [`policy`]: the subsidy policy (Beijing 2018 built in).
- [`calendar`]: seasons, nights, the off-peak window and its boundary instants.
- [`wire`]: the `readings` and `status` MQTT payloads with validation.
- `clock` (`std`): wall and accelerated clocks, so a season runs in seconds.
*/
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(missing_docs, unsafe_code)]

extern crate alloc;

pub mod calendar;
#[cfg(feature = "std")]
pub mod clock;
pub mod dlt645;
pub mod modbus;
pub mod policy;
pub mod units;
pub mod wire;

/// UTC Unix seconds: every instant on the wire and in the store.
pub type UnixTime = i64;
