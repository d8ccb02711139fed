/*!
DL/T 645-2007 codec: addresses, control codes, frames, a stream decoder, value
formats and the checks a master (and a simulated meter) applies.

Everything here is pure and alloc-free: frames live in `heapless` buffers, the
decoder never panics, and values come out as integers (Wh, 0.1 W, dV, mA, cHz).

# Layout
- [`address`] — `Address` (A0 first on the wire), broadcast and wildcard.
- [`control`] — `Control`, `Function`, `ReplyKind`, the ERR word `ErrorBits`.
- [`di`] — `Di` and the identifiers the project reads.
- [`frame`] — `Frame`, `Preamble`, the encoder and request builders.
- [`decoder`] — `decode` over a slice and the `FrameReader` reassembly buffer.
- [`data`], [`datetime`], [`value`] — BCD value formats, meter date/time, typed values.
- [`message`] — `parse_reply` (master) and `parse_request` (meter).

A master's read, end to end:
```
use qingnuan_shared::dlt645::{self, di, Address, Preamble, FrameReader};
let meter: Address = "123456789012".parse().unwrap();
let request = dlt645::read_data(meter, di::FORWARD_ACTIVE_TOTAL, Preamble::FOUR);
# let _ = request;
// ... write `request`, then feed what the bus returns:
let mut reader: FrameReader = FrameReader::new();
reader.feed(&[0x68, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x68, 0x91, 0x08,
              0x33, 0x33, 0x34, 0x33, 0xAB, 0x89, 0x67, 0x45, 0xCC, 0x16]);
let frame = reader.next_frame().unwrap().unwrap();
let reply = dlt645::parse_reply(&frame, &meter, di::FORWARD_ACTIVE_TOTAL).unwrap();
assert_eq!(dlt645::energy_wh(reply.value).unwrap().0, 123_456_780);
```
*/

pub mod address;
pub mod control;
pub mod data;
pub mod datetime;
pub mod decoder;
pub mod di;
pub mod frame;
pub mod message;
pub mod value;

pub use address::{Address, AddressError};
pub use control::{Control, ErrorBit, ErrorBits, Function, ReplyKind};
pub use data::{
    address_bytes, address_value, bcd_byte, bcd_signed, bcd_unsigned, current_bytes, current_ma,
    encode_bcd_signed, encode_bcd_unsigned, energy_bytes, energy_wh, frequency_bytes,
    frequency_chz, power_bytes, power_dw, power_dw_bytes, power_w, signed_energy_bytes,
    signed_energy_wh, to_bcd_byte, voltage_bytes, voltage_dv, DataError,
};
pub use datetime::{MeterDate, MeterDateTime, MeterTime};
pub use decoder::{decode, DecodeError, FrameReader, InvalidReason};
pub use di::{Di, DiParseError};
pub use frame::{
    broadcast_time, checksum, encode, read_address, read_data, read_follow_up, EncodeError, Frame,
    FrameBytes, FrameData, Preamble, MAX_DATA_LEN, MAX_FRAME_LEN, MAX_PREAMBLE, OVERHEAD_LEN,
};
pub use message::{
    parse_address_reply, parse_follow_up_reply, parse_reply, parse_request, reply_value, Reply,
    ReplyError, Request, RequestError,
};
pub use value::{decode_value, Format, Value, ValueBytes};
