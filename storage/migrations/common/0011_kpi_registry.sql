-- What the KPIs (api/routes/kpis.py, storage/kpis.py) need from the registry.
--
-- parks.grid_region: the region of the grid CO2 emission factor (a region of the
-- shipped factor set, smartpark/coefficients/grid-co2.yaml, checked by the API);
-- NULL: the set's default (national) factor.
--
-- enterprises.product: what the enterprise makes, for unit-product energy and water
-- per unit of output: {"name": "aluminium liquid", "metric": "production_mass",
-- "devices": ["cast-*"], "indicator": "aluminium_liquid_ac_power"}; "devices" are
-- device ids or fnmatch patterns (absent: every device of the enterprise reporting
-- the metric), "indicator" a GB 21346 indicator of the shipped norm (absent: no
-- verdict). NULL: no product configured.
--
-- enterprises.electricity_meters: the meters of purchased electricity (device ids
-- or fnmatch patterns); NULL: every device of the enterprise reporting
-- active_energy.
ALTER TABLE parks ADD COLUMN grid_region text;
ALTER TABLE enterprises ADD COLUMN product jsonb;
ALTER TABLE enterprises ADD COLUMN electricity_meters text[];
