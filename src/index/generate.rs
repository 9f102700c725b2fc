//! Synthetic index content for scale tests and benches: studies, series and
//! instances with realistic distributions, written straight into the index in
//! large batches (no HTTP, no blobs — the rows point at blobs that do not exist,
//! so such an index is for searching only).

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;

use super::conn::IndexConn;
use super::sql::{Bind, SqlBuilder};
use super::{now, with_conn, Index, IndexError, IndexPool};
use crate::dicom::text::{normalize_time, person_name_words, Bound};

/// A small deterministic generator (xorshift), so runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const FAMILY: &[&str] = &[
    "Müller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Dubois",
    "Martin",
    "Bernard",
    "Thomas",
    "Petit",
    "Robert",
    "Richard",
    "Durand",
    "Lefèvre",
    "Moreau",
    "Rossi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Bianchi",
    "Romano",
    "Colombo",
    "Ricci",
    "García",
    "Fernández",
    "González",
    "Rodríguez",
    "López",
    "Martínez",
    "Sánchez",
    "Pérez",
    "de Vries",
    "Jansen",
    "Nowak",
    "Kowalski",
    "Wiśniewski",
    "Novák",
    "Svoboda",
    "Nielsen",
    "Hansen",
    "Johansson",
    "Andersson",
    "Virtanen",
    "Smith",
    "Jones",
    "Williams",
    "Brown",
    "Taylor",
    "Davies",
    "Evans",
    "O'Brien",
    "Murphy",
    "Kelly",
    "Papadopoulos",
    "Horváth",
];
const GIVEN: &[&str] = &[
    "Anna", "Maria", "Sophie", "Emma", "Léa", "Chloé", "Giulia", "Sofia", "Lucía", "Eva", "Jan",
    "Lukas", "Jonas", "Paul", "Louis", "Hugo", "Luca", "Marco", "Pablo", "Javier", "Jürgen",
    "Björn", "Søren", "Zoë", "John", "James", "Oliver", "Noah", "Ella", "Mia", "Nikos", "Ákos",
    "Piotr", "Tomáš", "Mikko", "Aino",
];
/// Modalities with their weight (percent).
const MODALITIES: &[(&str, u64)] = &[
    ("CT", 25),
    ("MR", 20),
    ("CR", 15),
    ("DX", 10),
    ("US", 10),
    ("MG", 6),
    ("PT", 5),
    ("NM", 4),
    ("XA", 3),
    ("SR", 2),
];
const DESCRIPTIONS: &[&str] = &[
    "CT HEAD W/O CONTRAST",
    "MR BRAIN",
    "CHEST PA AND LATERAL",
    "CT ABDOMEN PELVIS",
    "US ABDOMEN",
    "MAMMO SCREENING",
    "MR KNEE LEFT",
    "PET CT WHOLE BODY",
    "CT THORAX",
    "XR HAND RIGHT",
    "MR SPINE LUMBAR",
    "ANGIO CORONARY",
];

fn modality(rng: &mut Rng) -> &'static str {
    let mut roll = rng.below(100);
    for (modality, weight) in MODALITIES {
        if roll < *weight {
            return modality;
        }
        roll -= weight;
    }
    "OT"
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = BigInt)]
    pk: i64,
    #[diesel(sql_type = Text)]
    uid: String,
}

/// What was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    pub studies: u64,
    pub series: u64,
    pub instances: u64,
}

/// Adds `studies` studies of `series_per_study` series of `instances_per_series`
/// instances; UIDs are `2.25.<seed>.<n>...` so several runs do not collide.
pub fn generate(
    index: &Index,
    studies: u64,
    series_per_study: u64,
    instances_per_series: u64,
    seed: u64,
    progress: &dyn Fn(u64),
) -> Result<Generated, IndexError> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let patients = (studies * 2 / 5).max(1);
    let batch = 500u64;
    let mut done = Generated {
        studies: 0,
        series: 0,
        instances: 0,
    };
    let mut start = 0;
    while start < studies {
        let end = (start + batch).min(studies);
        let created = with_conn!(index, conn => conn.write(|conn| {
            generate_batch(conn, &mut Rng(rng.next() | 1), seed, start..end, patients, series_per_study, instances_per_series)
        }))?;
        done.studies += created.studies;
        done.series += created.series;
        done.instances += created.instances;
        progress(end);
        start = end;
        let _ = rng.next();
    }
    // Fresh statistics (and on PostgreSQL a visibility map for index-only scans), as
    // the database's own maintenance would have by the time anyone searches.
    use diesel::connection::SimpleConnection;
    match index.dialect() {
        super::conn::Dialect::Sqlite => {
            with_conn!(index, conn => conn.batch_execute("ANALYZE")?)
        }
        super::conn::Dialect::Postgres => {
            with_conn!(index, conn => conn.batch_execute("VACUUM ANALYZE")?)
        }
    }
    Ok(done)
}

fn generate_batch<C: IndexConn>(
    conn: &mut C,
    rng: &mut Rng,
    seed: u64,
    range: std::ops::Range<u64>,
    patients: u64,
    series_per_study: u64,
    instances_per_series: u64,
) -> Result<Generated, IndexError> {
    let at = now();
    // Studies.
    let mut sql = SqlBuilder::new();
    sql.push(
        "INSERT INTO studies (study_instance_uid, patient_name, patient_name_norm, patient_name_words, patient_id, \
         patient_birth_date, patient_sex, study_date, study_time, study_time_norm, accession_number, study_id, \
         study_description, referring_physician_name, referring_physician_name_norm, referring_physician_name_words, \
         modalities_in_study, sop_classes_in_study, number_of_study_related_series, number_of_study_related_instances, \
         created_at, updated_at) VALUES ",
    );
    let mut study_modalities = Vec::new();
    for (i, n) in range.clone().enumerate() {
        let patient = rng.below(patients);
        let mut patient_rng = Rng((patient + 1).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let name = format!("{}^{}", patient_rng.pick(FAMILY), patient_rng.pick(GIVEN));
        let birth = format!(
            "{:04}{:02}{:02}",
            1930 + patient_rng.below(90),
            1 + patient_rng.below(12),
            1 + patient_rng.below(28)
        );
        let sex = ["F", "M", "O"][patient_rng.below(3) as usize % 3];
        let day = rng.below(20 * 365);
        let (year, month, dom) = (2006 + day / 365, 1 + (day % 365) / 31 % 12, 1 + day % 28);
        let time = format!(
            "{:02}{:02}{:02}",
            7 + rng.below(12),
            rng.below(60),
            rng.below(60)
        );
        let referring = format!("{}^{}", rng.pick(FAMILY), rng.pick(GIVEN));
        let modalities: Vec<&str> = {
            let mut m: Vec<&str> = (0..series_per_study).map(|_| modality(rng)).collect();
            m.sort();
            m.dedup();
            m
        };
        if i > 0 {
            sql.push(", ");
        }
        sql.push("(");
        let values = [
            Bind::Text(format!("2.25.{seed}.{n}")),
            Bind::Text(name.clone()),
            Bind::Text(super::qido::normalize_person_name(&name)),
            Bind::Text(person_name_words(&name)),
            Bind::Text(format!("P{:07}", patient)),
            Bind::Text(birth),
            Bind::Text(sex.into()),
            Bind::Text(format!("{year:04}{month:02}{dom:02}")),
            Bind::Text(time.clone()),
            Bind::NullableText(normalize_time(&time, Bound::Lower)),
            Bind::Text(format!(
                "A{:08}",
                seed.wrapping_mul(1_000_003).wrapping_add(n) % 100_000_000
            )),
            Bind::Text(format!("{}", n % 10_000)),
            Bind::Text(rng.pick(DESCRIPTIONS).into()),
            Bind::Text(referring.clone()),
            Bind::Text(super::qido::normalize_person_name(&referring)),
            Bind::Text(person_name_words(&referring)),
            Bind::Text(modalities.join("\\")),
            Bind::Text("1.2.840.10008.5.1.4.1.1.7".into()),
            Bind::Int(series_per_study as i64),
            Bind::Int((series_per_study * instances_per_series) as i64),
            Bind::Text(at.clone()),
            Bind::Text(at.clone()),
        ];
        sql.bind_list(values).push(")");
        study_modalities.push(modalities);
    }
    sql.push(" RETURNING study_pk AS pk, study_instance_uid AS uid");
    let studies = conn.load::<KeyRow>(sql.sql(), sql.binds())?;

    // Series.
    let mut sql = SqlBuilder::new();
    sql.push(
        "INSERT INTO series (study_fk, series_instance_uid, modality, series_number, series_description, \
         number_of_series_related_instances, created_at, updated_at) VALUES ",
    );
    let mut first = true;
    for (study, modalities) in studies.iter().zip(&study_modalities) {
        for s in 0..series_per_study {
            if !first {
                sql.push(", ");
            }
            first = false;
            sql.push("(")
                .bind(Bind::Int(study.pk))
                .push(", ")
                .bind(Bind::Text(format!("{}.{}", study.uid, s + 1)))
                .push(", ")
                .bind(Bind::Text(modalities[s as usize % modalities.len()].into()))
                .push(", ")
                .bind(Bind::Int(s as i64 + 1))
                .push(", ")
                .bind(Bind::Text(format!("series {}", s + 1)))
                .push(", ")
                .bind(Bind::Int(instances_per_series as i64))
                .push(", ")
                .bind(Bind::Text(at.clone()))
                .push(", ")
                .bind(Bind::Text(at.clone()))
                .push(")");
        }
    }
    sql.push(" RETURNING series_pk AS pk, series_instance_uid AS uid");
    let series = conn.load::<KeyRow>(sql.sql(), sql.binds())?;

    // Instances, in statements of a bounded number of binds.
    let mut count = 0u64;
    for chunk in series.chunks(200) {
        let mut sql = SqlBuilder::new();
        sql.push(
            "INSERT INTO instances (series_fk, sop_instance_uid, sop_class_uid, instance_number, image_rows, \
             image_columns, bits_allocated, number_of_frames, transfer_syntax_uid, blob_key, blob_size, \
             content_sha256, header_length, created_at) VALUES ",
        );
        let mut first = true;
        for s in chunk {
            for i in 0..instances_per_series {
                if !first {
                    sql.push(", ");
                }
                first = false;
                sql.push("(")
                    .bind(Bind::Int(s.pk))
                    .push(", ")
                    .bind(Bind::Text(format!("{}.{}", s.uid, i + 1)))
                    .push(", '1.2.840.10008.5.1.4.1.1.7', ")
                    .bind(Bind::Int(i as i64 + 1))
                    .push(", 512, 512, 16, 1, '1.2.840.10008.1.2.1', ")
                    .bind(Bind::Text(format!(
                        "instances/{}",
                        uuid::Uuid::new_v4().simple()
                    )))
                    .push(", 524288, 'synthetic', 1024, ")
                    .bind(Bind::Text(at.clone()))
                    .push(")");
                count += 1;
            }
        }
        conn.run(sql.sql(), sql.binds())?;
    }
    Ok(Generated {
        studies: studies.len() as u64,
        series: series.len() as u64,
        instances: count,
    })
}
