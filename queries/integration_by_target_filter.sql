-- title: Integration by target and filter
-- description: Raw light frames per target and filter: frames, nights, total integration in
-- description: hours, first and last night. A duplicate exposure (same instrument and
-- description: DATE-OBS, other bytes) counts once.
-- param: instrument (text) | Instrument name (INSTRUME); every instrument when not given
SELECT f.target,
       f.filter_name,
       COUNT(*) AS frames,
       COUNT(DISTINCT f.night) AS nights,
       SUM(f.exposure_time_s) / 3600.0 AS integration_h,
       MIN(f.night) AS first_night,
       MAX(f.night) AS last_night
FROM frames f
LEFT JOIN instruments i ON i.id = f.instrument_id
WHERE f.image_type = 'light'
  AND f.duplicate_of_id IS NULL
  AND (CAST(:instrument AS VARCHAR(200)) IS NULL OR i.name = :instrument)
GROUP BY f.target, f.filter_name
ORDER BY f.target, f.filter_name
