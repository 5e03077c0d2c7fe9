-- title: Calibration trends
-- description: The measured figures of calibration frames over time, per instrument (from
-- description: archive measure; each frame's newest successful measurement): bias level and
-- description: read noise, dark current (ADU/s, and e-/s with a known gain) beside the
-- description: set-point and measured temperature, hot pixels, flat level, signal-to-noise
-- description: and corner-to-centre falloff per filter, and for masters the fraction of
-- description: pixels changed since the previous master. Masters and raw calibration frames,
-- description: ordered by instrument, kind, filter, set-point and DATE-OBS. A master flat is
-- description: normalized (level near 1); the raw flats carry the level in ADU.
-- param: instrument (text) | Instrument name (INSTRUME); every instrument when not given
-- param: kind (bias, dark, flat) | One kind of calibration; every kind when not given
-- param: frames (masters, raw) | Only masters or only raw calibration frames; both when not given
-- param: since (date) | First night (YYYY-MM-DD); from the first when not given
-- param: until (date) | Last night (YYYY-MM-DD); to the last when not given
SELECT i.name AS instrument,
       CASE WHEN f.image_type IN ('bias', 'master_bias') THEN 'bias'
            WHEN f.image_type IN ('dark', 'master_dark') THEN 'dark'
            ELSE 'flat' END AS kind,
       CASE WHEN f.image_type LIKE 'master%' THEN 1 ELSE 0 END AS master,
       f.filter_name,
       f.night,
       f.date_obs,
       f.exposure_time_s,
       f.set_temp_c,
       f.ccd_temp_c,
       CASE WHEN f.image_type IN ('dark', 'master_dark') THEN NULL ELSE m.background_adu END AS level_adu,
       m.noise_adu,
       m.read_noise_adu,
       m.read_noise_e,
       m.dark_current_adu_s,
       m.dark_current_e_s,
       m.hot_pixels,
       m.flat_snr,
       m.flat_falloff,
       m.changed_fraction,
       f.id AS frame_id,
       m.version AS measurement_version
FROM frames f
JOIN frame_measurements m ON m.frame_id = f.id
LEFT JOIN instruments i ON i.id = f.instrument_id
WHERE f.image_type IN ('bias', 'dark', 'flat', 'master_bias', 'master_dark', 'master_flat')
  AND f.duplicate_of_id IS NULL
  AND m.id = (SELECT MAX(m2.id) FROM frame_measurements m2 WHERE m2.frame_id = f.id AND m2.status = 'ok')
  AND (CAST(:instrument AS VARCHAR(200)) IS NULL OR i.name = :instrument)
  AND (CAST(:kind AS VARCHAR(10)) IS NULL OR f.image_type IN (:kind, 'master_' || :kind))
  AND (CAST(:frames AS VARCHAR(10)) IS NULL
       OR (:frames = 'masters' AND f.image_type LIKE 'master%')
       OR (:frames = 'raw' AND f.image_type NOT LIKE 'master%'))
  AND (CAST(:since AS DATE) IS NULL OR f.night >= :since)
  AND (CAST(:until AS DATE) IS NULL OR f.night <= :until)
ORDER BY i.name, kind, CASE WHEN f.filter_name IS NULL THEN 0 ELSE 1 END, f.filter_name,
         CASE WHEN f.set_temp_c IS NULL THEN 1 ELSE 0 END, f.set_temp_c, f.date_obs_s, f.id
