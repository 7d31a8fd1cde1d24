//! Sweeps: one workload run at each value of one parameter (shards,
//! partitions, batch size, acks, producers, requests in flight, or a topic
//! config such as a flush policy), into one table and one plot:
//! `perf-reports/sweep-<preset>-<parameter>.md/.json/.svg`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::machine::Machine;
use crate::workload::{execute, load, Outcome, Workload};

#[derive(clap::Args)]
pub struct Args {
    /// A preset file, e.g. bench/workloads/max-produce-1k.toml.
    preset: PathBuf,
    /// NAME=v1,v2,...; repeat for a grid of every combination. NAME is
    /// shards, partitions, partitions_per_shard, batch_bytes, message_bytes,
    /// acks, protocol, producers, max_in_flight, topic.<config> (e.g.
    /// topic.flush.ms), or broker.<key> (e.g. broker.spin_before_park_us).
    #[arg(long = "param", required = true)]
    params: Vec<String>,
    /// Measured seconds per point (overrides the preset's duration).
    #[arg(long, default_value_t = 6.0)]
    duration_s: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Runs per point; the table shows the run with the median produce
    /// rate, and the spread of all runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Client threads pinned to these cores (see `run --client-cpus`).
    #[arg(long, value_delimiter = ',')]
    client_cpus: Option<Vec<usize>>,
    #[arg(long, default_value = "corelog-data/bench-sweep")]
    data_dir: PathBuf,
    #[arg(long, default_value_os_t = crate::default_report_dir())]
    report_dir: PathBuf,
}

/// Sweeps with more points than this are refused: each point is a run of
/// several seconds against a fresh broker.
const POINTS_MAX: usize = 64;

#[derive(Serialize)]
struct Point {
    /// `name=value` of each swept parameter, in the order given.
    label: String,
    settings: Vec<(String, String)>,
    /// The run with the median produce rate.
    outcome: Outcome,
    /// Produce MB/s of every run, sorted.
    runs_mb_per_s: Vec<f64>,
}

fn set(workload: &mut Workload, param: &str, value: &str) -> Result<(), String> {
    let number = || {
        value
            .parse::<usize>()
            .map_err(|_| format!("{param}={value}: not a number"))
    };
    match param {
        "shards" => workload.shards = number()?,
        "partitions" => workload.partitions = number()? as u32,
        // Applied after every other parameter, as shards may be swept too.
        "partitions_per_shard" => {}
        "batch_bytes" => workload.batch_bytes = number()?,
        "message_bytes" => workload.message_bytes = number()?,
        "producers" => workload.producers = number()?,
        // 0 against the preset's: produce alone beside produce with consumers.
        "consumers" => workload.consumers = number()?,
        "max_in_flight" => workload.max_in_flight = number()?,
        "acks" => workload.acks = value.to_string(),
        "protocol" => {
            crate::workload::check_protocol(value)?;
            workload.protocol = value.to_string();
        }
        other => {
            if let Some(key) = other.strip_prefix("topic.") {
                workload.topic_configs.insert(key.to_string(), value.to_string());
            } else if let Some(key) = other.strip_prefix("broker.") {
                workload.broker_configs.insert(key.to_string(), value.to_string());
            } else {
                return Err(format!("cannot sweep {other}"));
            }
        }
    }
    Ok(())
}

/// Parses `NAME=v1,v2,...`.
fn parse_param(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, values) = text
        .split_once('=')
        .ok_or_else(|| format!("--param {text}: expected NAME=v1,v2,..."))?;
    let values: Vec<String> = values.split(',').map(str::to_string).collect();
    if name.is_empty() || values.iter().any(String::is_empty) {
        return Err(format!("--param {text}: expected NAME=v1,v2,..."));
    }
    Ok((name.to_string(), values))
}

/// Every combination of the parameters' values, the last parameter
/// varying fastest.
fn grid(params: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    params.iter().fold(vec![Vec::new()], |combinations, (name, values)| {
        combinations
            .iter()
            .flat_map(|prefix| {
                values.iter().map(move |value| {
                    let mut next = prefix.clone();
                    next.push((name.clone(), value.clone()));
                    next
                })
            })
            .collect()
    })
}

fn configure(base: &Workload, args: &Args, settings: &[(String, String)]) -> Result<Workload, String> {
    let mut workload = Workload {
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        produce_bytes: None,
        client_cpus: args.client_cpus.clone().unwrap_or_else(|| base.client_cpus.clone()),
        ..base.clone()
    };
    for (name, value) in settings {
        set(&mut workload, name, value)?;
    }
    if let Some((_, value)) = settings.iter().find(|(name, _)| name == "partitions_per_shard") {
        let per_shard: u32 = value
            .parse()
            .map_err(|_| format!("partitions_per_shard={value}: not a number"))?;
        workload.partitions = per_shard * workload.shards as u32;
    }
    if workload.shards != base.shards {
        // Pinned broker cores are for the preset's shard count.
        workload.broker_cpus.clear();
    }
    if workload.partitions == 0 || workload.shards == 0 || workload.producers == 0 {
        return Err(format!("{settings:?}: needs a shard, a partition and a producer"));
    }
    Ok(workload)
}

pub fn run(args: Args) -> Result<(), String> {
    let base = load(&args.preset)?;
    let params = args
        .params
        .iter()
        .map(|p| parse_param(p))
        .collect::<Result<Vec<_>, _>>()?;
    let combinations = grid(&params);
    if combinations.len() > POINTS_MAX {
        return Err(format!("{} points: at most {POINTS_MAX} per sweep", combinations.len()));
    }
    // Check every point before running any.
    for settings in &combinations {
        configure(&base, &args, settings)?;
    }
    let machine = Machine::describe(Path::new("."));
    let mut points = Vec::new();
    for settings in combinations {
        let workload = configure(&base, &args, &settings)?;
        let label = settings
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut outcomes = Vec::new();
        for run in 1..=args.runs.max(1) {
            eprintln!("sweep {} {label} (run {run}/{})", base.name, args.runs.max(1));
            outcomes.push(execute(&workload, None, &args.data_dir)?);
        }
        outcomes.sort_by(|a, b| a.produce_mb_per_s.total_cmp(&b.produce_mb_per_s));
        let runs_mb_per_s = outcomes.iter().map(|o| o.produce_mb_per_s).collect();
        let outcome = outcomes.swap_remove(outcomes.len() / 2);
        points.push(Point {
            label,
            settings,
            outcome,
            runs_mb_per_s,
        });
    }
    let names: Vec<&str> = params.iter().map(|(name, _)| name.as_str()).collect();
    let stem = format!("sweep-{}-{}", base.name, names.join("-").replace('.', "-"));
    std::fs::create_dir_all(&args.report_dir).map_err(|e| e.to_string())?;
    plot(&args.report_dir.join(format!("{stem}.svg")), &params, &points).map_err(|e| format!("plot: {e}"))?;
    let command_params: Vec<String> = args.params.iter().map(|p| format!("--param {p}")).collect();
    let mut md = format!(
        "# Sweep of {} over {}\n\nGenerated by `target/release/corelog-bench sweep bench/workloads/{}.toml {}`; do not edit by hand.\n\n{}\n\nEach point is {} runs of the workload ({} s measured after {} s of warm-up), each against a fresh broker; the row shows the run with the median produce rate, and the range of all runs. MB/s counts record bytes (10^6 B/s). Client threads: {}.\n\n## Machine\n\n{}\n## Results\n\n| {} | total partitions | produce MB/s (median) | runs' range | consume MB/s | produce-ack p50 µs | p99 µs | end-to-end p99 µs | broker peak RSS MiB | broker allocations per request / per record | broker shards' CPU, % of a core |\n|{}---|---|---|---|---|---|---|---|---|---|\n",
        base.name,
        names.join(" × "),
        base.name,
        command_params.join(" "),
        base.description,
        args.runs.max(1),
        args.duration_s,
        args.warmup_s,
        match &args.client_cpus {
            Some(cpus) => format!("pinned to cores {cpus:?}"),
            None => "one, unpinned".into(),
        },
        machine.markdown(),
        names.join(" | "),
        "---|".repeat(names.len()),
    );
    let best = points.iter().map(|p| p.outcome.produce_mb_per_s).fold(0.0f64, f64::max);
    for point in &points {
        let o = &point.outcome;
        let rate = if o.produce_mb_per_s == best {
            format!("**{:.0}**", o.produce_mb_per_s)
        } else {
            format!("{:.0}", o.produce_mb_per_s)
        };
        let e2e = if o.end_to_end.count > 0 {
            o.end_to_end.p99_us.to_string()
        } else {
            "-".into()
        };
        let values: Vec<&str> = point.settings.iter().map(|(_, v)| v.as_str()).collect();
        let partitions = configure(&base, &args, &point.settings)?.partitions;
        md.push_str(&format!(
            "| {} | {partitions} | {rate} | {:.0}–{:.0} | {:.0} | {} | {} | {e2e} | {} | {} | {} |\n",
            values.join(" | "),
            point.runs_mb_per_s.first().copied().unwrap_or(0.0),
            point.runs_mb_per_s.last().copied().unwrap_or(0.0),
            o.consume_mb_per_s,
            o.produce_ack.p50_us,
            o.produce_ack.p99_us,
            o.broker_peak_rss_bytes.map_or("-".into(), |b| (b >> 20).to_string()),
            o.broker.as_ref().map_or("-".into(), |b| {
                let per = |d: u64| b.allocations as f64 / d.max(1) as f64;
                format!("{:.1} / {:.3}", per(b.requests), per(b.records_appended))
            }),
            o.broker
                .as_ref()
                .and_then(|b| b.cpu_percent_of_a_core())
                .map_or("-".into(), |p| format!("{p:.0}")),
        ));
    }
    md.push_str(&format!(
        "\n![produce throughput over {}]({stem}.svg)\n",
        names.join(" × ")
    ));
    std::fs::write(args.report_dir.join(format!("{stem}.md")), md).map_err(|e| e.to_string())?;
    let json = serde_json::json!({ "workload": base.name, "params": names, "machine": machine, "points": points });
    std::fs::write(
        args.report_dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    crate::index::write(&args.report_dir)
}

/// Produce throughput against the last parameter's values, one line per
/// combination of the others.
fn plot(path: &Path, params: &[(String, Vec<String>)], points: &[Point]) -> Result<(), Box<dyn std::error::Error>> {
    let (x_name, x_values) = params.last().expect("a parameter");
    let root = SVGBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = points.iter().map(|p| p.outcome.produce_mb_per_s).fold(1.0f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Produce throughput (MB/s) by {x_name}"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5f64..(x_values.len() as f64 - 0.5), 0f64..top)?;
    chart
        .configure_mesh()
        .x_labels(x_values.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                x_values.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(x_name.as_str())
        .y_desc("MB/s")
        .draw()?;
    // Points come in grid order, the last parameter varying fastest.
    for (line, chunk) in points.chunks(x_values.len()).enumerate() {
        let color = Palette99::pick(line).to_rgba();
        let series: Vec<(f64, f64)> = chunk
            .iter()
            .enumerate()
            .map(|(i, p)| (i as f64, p.outcome.produce_mb_per_s))
            .collect();
        let name = chunk[0].settings[..chunk[0].settings.len() - 1]
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        chart
            .draw_series(LineSeries::new(series.clone(), color))?
            .label(if name.is_empty() { "produce".to_string() } else { name })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart.draw_series(series.into_iter().map(|(x, y)| Circle::new((x, y), 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_holds_every_combination_last_fastest() {
        let params = vec![
            parse_param("shards=1,2").unwrap(),
            parse_param("partitions_per_shard=1,4").unwrap(),
        ];
        let labels: Vec<String> = grid(&params)
            .iter()
            .map(|s| s.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            labels,
            [
                "shards=1 partitions_per_shard=1",
                "shards=1 partitions_per_shard=4",
                "shards=2 partitions_per_shard=1",
                "shards=2 partitions_per_shard=4"
            ]
        );
        assert!(parse_param("shards").is_err());
        assert!(parse_param("shards=1,,2").is_err());
    }

    #[test]
    fn partitions_per_shard_follows_the_shards_of_the_point() {
        let base = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/max-produce-1k.toml")).unwrap();
        let args = Args {
            preset: PathBuf::new(),
            params: vec![],
            duration_s: 1.0,
            warmup_s: 0.0,
            runs: 1,
            client_cpus: None,
            data_dir: PathBuf::new(),
            report_dir: PathBuf::new(),
        };
        let settings = vec![
            ("partitions_per_shard".to_string(), "3".to_string()),
            ("shards".to_string(), "2".to_string()),
        ];
        let workload = configure(&base, &args, &settings).unwrap();
        assert_eq!((workload.shards, workload.partitions), (2, 6));
        let bad = vec![("replicas".to_string(), "3".to_string())];
        assert!(configure(&base, &args, &bad).is_err());
    }
}
