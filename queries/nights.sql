-- title: Observing nights
-- description: One row per local observing night: raw exposures by image type (a duplicate
-- description: exposure counted once, masters and products left out), light integration in
-- description: hours, and the first and last exposure start (UTC).
-- param: instrument (text) | Instrument name (INSTRUME); every instrument when not given
SELECT f.night,
       COUNT(*) AS frames,
       SUM(CASE WHEN f.image_type = 'bias' THEN 1 ELSE 0 END) AS bias,
       SUM(CASE WHEN f.image_type = 'dark' THEN 1 ELSE 0 END) AS dark,
       SUM(CASE WHEN f.image_type = 'flat' THEN 1 ELSE 0 END) AS flat,
       SUM(CASE WHEN f.image_type = 'light' THEN 1 ELSE 0 END) AS light,
       SUM(CASE WHEN f.image_type = 'light' THEN f.exposure_time_s ELSE 0 END) / 3600.0 AS light_h,
       MIN(f.date_obs) AS first_utc,
       MAX(f.date_obs) AS last_utc
FROM frames f
LEFT JOIN instruments i ON i.id = f.instrument_id
WHERE f.night IS NOT NULL
  AND f.duplicate_of_id IS NULL
  AND (f.image_type IS NULL OR f.image_type IN ('bias', 'dark', 'flat', 'light', 'dark_flat', 'arc'))
  AND (CAST(:instrument AS VARCHAR(200)) IS NULL OR i.name = :instrument)
GROUP BY f.night
ORDER BY f.night
