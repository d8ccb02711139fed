//! The fleet model: households whose heat-pump meters follow a seeded, deterministic
//! power curve, so every test knows the true off-peak Wh of every household and night.
//!
//! The model is pure and cheap to query at any instant: power is constant within each
//! 20-minute compressor cycle segment, and the energy of each hour is prefix-summed once,
//! so `energy_mwh(t)` is a lookup plus one multiplication. Energy is kept in mWh so the
//! truth is exact; a meter shows it floored to its 10 Wh (0.01 kWh) register resolution.

use qingnuan_shared::calendar::{Calendar, Night};
use qingnuan_shared::units::Wh;
use qingnuan_shared::UnixTime;

/// Length of one compressor cycle, seconds.
const CYCLE_S: i64 = 1200;
/// Resolution of a DL/T 645 energy register, Wh (`XXXXXX.XX` kWh).
pub const REGISTER_RESOLUTION_WH: i64 = 10;

/// Districts, towns and villages used by the simulated registry. District names are
/// those of the 2018 plan (`shared/data/task-allocation-2018.csv`).
pub const PLACES: &[(&str, &str, &str)] = &[
    ("怀柔区", "雁栖镇", "下辛庄村"),
    ("怀柔区", "雁栖镇", "范各庄村"),
    ("顺义区", "龙湾屯镇", "焦庄户村"),
    ("平谷区", "大华山镇", "后北宫村"),
    ("密云区", "溪翁庄镇", "金叵罗村"),
    ("延庆区", "康庄镇", "小丰营村"),
    ("昌平区", "兴寿镇", "秦家屯村"),
    ("房山区", "青龙湖镇", "坨里村"),
    ("门头沟区", "斋堂镇", "爨底下村"),
];

/// SplitMix64: a tiny, well-known deterministic mixer for seeded noise.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One simulated household and its meter.
#[derive(Debug, Clone)]
pub struct SimHousehold {
    /// Household id, `hh-0001`.
    pub id: String,
    /// The meter's 12-digit DL/T 645 address.
    pub meter: String,
    /// Gateway id, `gw-0001`.
    pub gateway: String,
    /// (district, town, village).
    pub place: (&'static str, &'static str, &'static str),
    /// Heated area, m².
    pub area_m2: i64,
    /// Compressor power when running, W.
    pub p_on_w: i64,
    /// Register value at `epoch`, Wh.
    pub e0_wh: i64,
    seed: u64,
    epoch: UnixTime,
    /// Prefix sums of energy at each hour start since `epoch`, mWh.
    hour_mwh: Vec<i64>,
    /// Duty of each hour, per mille.
    duty: Vec<i64>,
}

impl SimHousehold {
    /// Power drawn at `t`, W.
    pub fn power_w(&self, t: UnixTime) -> i64 {
        let Some(h) = self.hour_index(t) else {
            return 0;
        };
        let in_cycle = (t - self.epoch).rem_euclid(CYCLE_S);
        if in_cycle < self.duty[h] * CYCLE_S / 1000 {
            self.p_on_w
        } else {
            0
        }
    }

    /// True energy drawn since `epoch`, mWh (exact).
    pub fn energy_mwh(&self, t: UnixTime) -> i64 {
        let Some(h) = self.hour_index(t) else {
            return if t < self.epoch {
                0
            } else {
                self.hour_mwh.last().copied().unwrap_or(0)
            };
        };
        let hour_start = self.epoch + 3600 * h as i64;
        let mut e = self.hour_mwh[h];
        // Whole cycles inside the hour so far, then the part of the current cycle.
        let into = t - hour_start;
        let on_per_cycle = self.duty[h] * CYCLE_S / 1000;
        let full = into / CYCLE_S;
        let part = (into % CYCLE_S).min(on_per_cycle);
        e += (full * on_per_cycle + part) * self.p_on_w * 1000 / 3600;
        e
    }

    /// The meter's register at `t`: the true energy floored to 10 Wh, plus its start value, Wh.
    pub fn register_wh(&self, t: UnixTime) -> i64 {
        let wh = self.e0_wh + self.energy_mwh(t) / 1000;
        wh - wh.rem_euclid(REGISTER_RESOLUTION_WH)
    }

    /// The valley (tariff 4) register, assuming the meter's TOU table matches the policy:
    /// energy drawn inside the daily window since `epoch`, floored to 10 Wh.
    pub fn valley_register_wh(&self, cal: &Calendar, t: UnixTime) -> i64 {
        let mut total = 0i64;
        let mut n = cal
            .window_night(self.epoch)
            .unwrap_or(Night(cal.local_date(self.epoch)));
        loop {
            let (a, b) = cal.window(n);
            if a >= t {
                break;
            }
            let (a, b) = (a.max(self.epoch), b.min(t));
            if a < b {
                total += self.energy_mwh(b) - self.energy_mwh(a);
            }
            n = n.next();
        }
        let wh = self.e0_wh / 3 + total / 1000;
        wh - wh.rem_euclid(REGISTER_RESOLUTION_WH)
    }

    /// True subsidised energy of `night` (window clipped to the season), exact mWh.
    pub fn true_night_mwh(&self, cal: &Calendar, night: Night) -> i64 {
        cal.night_span(night)
            .map_or(0, |(a, b)| self.energy_mwh(b) - self.energy_mwh(a))
    }

    /// True subsidised energy of `night`, rounded down to Wh.
    pub fn true_night_wh(&self, cal: &Calendar, night: Night) -> Wh {
        Wh(self.true_night_mwh(cal, night) / 1000)
    }

    /// A deterministic per-household random number for `salt`.
    pub fn noise(&self, salt: u64) -> u64 {
        mix(self.seed ^ mix(salt))
    }

    fn hour_index(&self, t: UnixTime) -> Option<usize> {
        if t < self.epoch {
            return None;
        }
        let h = usize::try_from((t - self.epoch) / 3600).ok()?;
        (h < self.duty.len()).then_some(h)
    }
}

/// Parameters of a simulated fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of households (one meter each).
    pub households: usize,
    /// Number of gateways; households are dealt round-robin.
    pub gateways: usize,
    /// First instant modelled (register = start value before it).
    pub epoch: UnixTime,
    /// Days modelled after `epoch` (power is 0 after).
    pub days: i64,
}

/// A simulated village (or several).
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The households, in id order.
    pub households: Vec<SimHousehold>,
    /// The calendar the model's day/night rhythm follows.
    pub calendar: Calendar,
}

impl Fleet {
    /// Builds the fleet: every household's hourly duty from a seasonal temperature curve
    /// (coldest mid-January), a colder night, seeded daily weather, and its own habits.
    pub fn new(spec: &FleetSpec, calendar: Calendar) -> Self {
        let hours = usize::try_from(spec.days.max(0) * 24).unwrap_or(0);
        let gateways = spec.gateways.max(1);
        let households = (0..spec.households)
            .map(|i| {
                let seed = mix(spec.seed ^ (i as u64).wrapping_mul(0x1000_0001));
                let area_m2 = 60 + (mix(seed ^ 1) % 120) as i64;
                let p_on_w = 1500 + (mix(seed ^ 2) % 2500) as i64;
                let mut duty = Vec::with_capacity(hours);
                let mut hour_mwh = Vec::with_capacity(hours + 1);
                let mut acc = 0i64;
                for h in 0..hours {
                    let t = spec.epoch + 3600 * h as i64;
                    let d = duty_permille(&calendar, spec.seed, seed, area_m2, p_on_w, t);
                    hour_mwh.push(acc);
                    // Whole cycles per hour: 3 × on-time × power.
                    acc += 3 * (d * CYCLE_S / 1000) * p_on_w * 1000 / 3600;
                    duty.push(d);
                }
                hour_mwh.push(acc);
                SimHousehold {
                    id: format!("hh-{:04}", i + 1),
                    meter: format!(
                        "{:012}",
                        100_000_000_000u64 + 1000 * (i as u64 + 1) + (mix(seed ^ 3) % 1000)
                    ),
                    gateway: format!("gw-{:04}", i % gateways + 1),
                    place: PLACES[(i % gateways) % PLACES.len()],
                    area_m2,
                    p_on_w,
                    e0_wh: 10 * (mix(seed ^ 4) % 5_000_000) as i64,
                    seed,
                    epoch: spec.epoch,
                    hour_mwh,
                    duty,
                }
            })
            .collect();
        Self {
            households,
            calendar,
        }
    }

    /// The registry CSV of CONTRACT.md for this fleet, every meter valid from `from`
    /// (a local `YYYY-MM-DD`).
    pub fn registry_csv(&self, from: &str) -> String {
        let mut s = String::from(
            "household,district,town,village,heating_area_m2,device,meter,meter_from,meter_to,gateway,max_power_w\n",
        );
        for h in &self.households {
            s.push_str(&format!(
                "{},{},{},{},{},air_source_heat_pump,{},{},,{},\n",
                h.id, h.place.0, h.place.1, h.place.2, h.area_m2, h.meter, from, h.gateway
            ));
        }
        s
    }

    /// Households behind one gateway.
    pub fn on_gateway<'a>(&'a self, gw: &'a str) -> impl Iterator<Item = &'a SimHousehold> + 'a {
        self.households.iter().filter(move |h| h.gateway == gw)
    }
}

/// Outdoor temperature at `t`, tenths of °C: −5 °C mean in mid-January, +8 °C at the
/// season's edges, 6 °C colder at 04:00 than at 14:00, and ±3 °C of daily weather.
pub fn temperature_dc(cal: &Calendar, fleet_seed: u64, t: UnixTime) -> i64 {
    let date = cal.local_date(t);
    let doy = i64::from(date.ordinal());
    // Distance in days from Jan 15, wrapping over the new year (0..=182).
    let from_jan15 = {
        let d = (doy - 15).rem_euclid(365);
        d.min(365 - d)
    };
    let seasonal = -50 + from_jan15 * 130 / 75; // -5.0 °C .. +8.0 °C at ±75 days
    let local_s = (t + i64::from(cal.policy().utc_offset_s)).rem_euclid(86_400);
    let hour = local_s / 3600;
    let diurnal = if (4..=14).contains(&hour) {
        -30 + (hour - 4) * 6
    } else {
        30 - ((hour + 24 - 14) % 24) * 60 / 14
    };
    let weather = (mix(fleet_seed ^ (i64::from(date.to_julian_day()) as u64)) % 61) as i64 - 30;
    seasonal + diurnal + weather
}

fn duty_permille(
    cal: &Calendar,
    fleet_seed: u64,
    hh_seed: u64,
    area_m2: i64,
    p_on_w: i64,
    t: UnixTime,
) -> i64 {
    let temp_dc = temperature_dc(cal, fleet_seed, t);
    // Heat loss 1.5 W/(m²·K) to 18 °C, COP 2.5: electric demand in W.
    let demand_w = (area_m2 * 15 * (180 - temp_dc).max(0) / 100) * 10 / 25;
    // Households heat more in the cheap window and turn down by day.
    let factor = if cal.in_window(t) { 100 } else { 55 };
    let jitter = (mix(hh_seed ^ (t as u64 / 3600)) % 21) as i64 - 10; // ±10 %
    let demand_w = demand_w * factor / 100 * (100 + jitter) / 100;
    (demand_w * 1000 / p_on_w.max(1)).clamp(0, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qingnuan_shared::policy::Policy;

    fn fleet() -> Fleet {
        let cal = Calendar::new(Policy::beijing_2018());
        let epoch = cal.local_midnight("2025-10-30".parse::<Night>().unwrap().0);
        Fleet::new(
            &FleetSpec {
                seed: 7,
                households: 5,
                gateways: 2,
                epoch,
                days: 160,
            },
            cal,
        )
    }

    #[test]
    fn energy_is_the_integral_of_power() {
        let f = fleet();
        let h = &f.households[0];
        let t0 = f
            .calendar
            .local_midnight("2025-12-10".parse::<Night>().unwrap().0)
            + 20 * 3600;
        // Integrate power second by second over 3 hours and compare with the closed form.
        let mut mj = 0i64; // W·s
        for t in t0..t0 + 3 * 3600 {
            mj += h.power_w(t);
        }
        let closed = h.energy_mwh(t0 + 3 * 3600) - h.energy_mwh(t0);
        assert!(
            (mj * 1000 / 3600 - closed).abs() <= 3 * 3 * 2,
            "{} vs {}",
            mj * 1000 / 3600,
            closed
        );
        assert!(closed > 0);
    }

    #[test]
    fn registers_rise_in_10_wh_steps_and_never_fall() {
        let f = fleet();
        let h = &f.households[1];
        let mut last = 0;
        for k in 0..2000 {
            let t = h.epoch + k * 3607;
            let r = h.register_wh(t);
            assert_eq!(r % 10, 0);
            assert!(r >= last);
            last = r;
        }
    }

    #[test]
    fn cold_nights_draw_more_than_mild_ones() {
        let f = fleet();
        let cal = &f.calendar;
        let jan: i64 = f
            .households
            .iter()
            .map(|h| h.true_night_wh(cal, "2026-01-15".parse().unwrap()).0)
            .sum();
        let nov: i64 = f
            .households
            .iter()
            .map(|h| h.true_night_wh(cal, "2025-11-02".parse().unwrap()).0)
            .sum();
        assert!(jan > nov, "jan {jan} nov {nov}");
        assert_eq!(
            f.households
                .iter()
                .filter(|h| h.gateway == "gw-0002")
                .count(),
            2
        );
        assert!(f
            .registry_csv("2025-10-01")
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("hh-0001,怀柔区,雁栖镇,下辛庄村,"));
    }
}
