-- title: Integration by target and filter
-- description: Raw light frames per target and filter: frames, nights, total integration in
-- description: hours, first and last night. A duplicate exposure (same instrument and
-- description: DATE-OBS, other bytes) counts once. With cone or covers, only the frames whose
-- description: footprint comes within the cone or contains the position.
-- param: instrument (text) | Instrument name (INSTRUME); every instrument when not given
-- param: cone (cone) | RA,DEC,RADIUS in degrees: frames whose footprint comes within the radius
-- param: covers (covers) | RA,DEC in degrees: frames whose footprint contains the position
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
  AND (CAST(:cone AS VARCHAR(200)) IS NULL OR f.id IN (SELECT frame_id FROM sky_cone))
  AND (CAST(:covers AS VARCHAR(200)) IS NULL OR f.id IN (SELECT frame_id FROM sky_covers))
GROUP BY f.target, f.filter_name
ORDER BY f.target, f.filter_name
