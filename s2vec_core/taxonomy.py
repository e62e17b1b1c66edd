"""The feature vector: a versioned mapping from OSM tags to channels (one table, the single source of truth).

Each channel has a kind:
- `count`: points and areas whose tags match, one per object, at the cell of the point / area centroid;
- `length_m`: ways whose tags match, their length split over the cells they cross;
- `area_m2`: areas whose tags match, their area either at the centroid cell (`spread=False`, buildings)
  or spread over the cells the polygon covers (`spread=True`, land use and natural cover).

A rule is `(key, values)`; `values=None` matches any value except `no`. An object feeds every channel
one of its tags matches, once per channel. `python -m s2vec_core.taxonomy` prints TAXONOMY.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

# Bump on any change to CHANNELS: stored features carry it, so old and new vectors never mix silently.
TAXONOMY_VERSION = "2026.11.1"

Kind = Literal["count", "length_m", "area_m2"]
KINDS: tuple[str, ...] = ("count", "length_m", "area_m2")

# Keys teammates use as evaluation targets (building height, addresses): feeding them into channels
# would leak the target into the embedding. Entries ending in ':' are prefixes.
RESERVED_TARGET_KEYS: tuple[str, ...] = (
    "addr:",
    "building:levels",
    "height",
    "building:height",
    "population",
)

# Values that mean "not this" for a wildcard rule.
NEGATIVE_VALUES = frozenset({"no"})


@dataclass(frozen=True)
class Channel:
    """One feature channel: its column name, kind, rules `((key, values|None), ...)` and description."""

    name: str
    kind: Kind
    rules: tuple[tuple[str, tuple[str, ...] | None], ...]
    description: str
    spread: bool = False


def _c(
    name: str, kind: Kind, description: str, *rules: tuple[str, str | None], spread: bool = False
) -> Channel:
    """Build a Channel from rules written as `(key, "v1 v2 ...")` or `(key, None)` for any value."""
    parsed = tuple((k, tuple(v.split()) if v is not None else None) for k, v in rules)
    return Channel(name, kind, parsed, description, spread)


CHANNELS: tuple[Channel, ...] = (
    # --- amenities, grouped (points and POI areas) ---
    _c(
        "amenity_food",
        "count",
        "restaurants, fast food, cafes",
        ("amenity", "restaurant fast_food cafe food_court ice_cream"),
    ),
    _c(
        "amenity_drink",
        "count",
        "bars, pubs, beer gardens, nightclubs",
        ("amenity", "bar pub biergarten nightclub"),
    ),
    _c(
        "amenity_education",
        "count",
        "schools, kindergartens, universities, libraries",
        (
            "amenity",
            (
                "school kindergarten childcare college university library music_school "
                "language_school driving_school"
            ),
        ),
    ),
    _c(
        "amenity_health",
        "count",
        "hospitals, clinics, doctors, dentists, pharmacies",
        ("amenity", "hospital clinic doctors dentist pharmacy veterinary nursing_home"),
    ),
    _c("amenity_finance", "count", "banks, ATMs, exchange", ("amenity", "bank atm bureau_de_change")),
    _c(
        "amenity_transport",
        "count",
        "parking, fuel, charging, rental, taxi, bus stations",
        (
            "amenity",
            (
                "parking parking_space parking_entrance bicycle_parking motorcycle_parking fuel "
                "charging_station car_rental car_sharing bicycle_rental taxi bus_station "
                "ferry_terminal car_wash"
            ),
        ),
    ),
    _c(
        "amenity_public_service",
        "count",
        "town halls, police, fire stations, post, courts, social",
        (
            "amenity",
            (
                "townhall police fire_station post_office post_box courthouse community_centre "
                "social_facility prison public_building ranger_station"
            ),
        ),
    ),
    _c(
        "amenity_culture",
        "count",
        "theatres, cinemas, arts centres, event venues",
        ("amenity", "theatre cinema arts_centre studio events_venue"),
    ),
    _c(
        "amenity_worship",
        "count",
        "places of worship, monasteries",
        ("amenity", "place_of_worship monastery"),
    ),
    _c(
        "amenity_sanitation",
        "count",
        "toilets, waste baskets, recycling, drinking water",
        ("amenity", "toilets waste_basket waste_disposal recycling drinking_water shower"),
    ),
    _c(
        "amenity_street_furniture",
        "count",
        "benches, shelters, fountains, phones, vending",
        ("amenity", "bench shelter fountain telephone vending_machine clock bbq hunting_stand"),
    ),
    _c("amenity_any", "count", "any amenity", ("amenity", None)),
    # --- shops, grouped ---
    _c(
        "shop_food",
        "count",
        "supermarkets, convenience, bakeries, butchers, drinks",
        (
            "shop",
            (
                "supermarket convenience bakery butcher greengrocer deli beverages alcohol "
                "confectionery kiosk cheese seafood farm wine coffee tea pastry chocolate"
            ),
        ),
    ),
    _c(
        "shop_fashion",
        "count",
        "clothes, shoes, jewellery",
        ("shop", "clothes shoes jewelry boutique fashion bag watches tailor"),
    ),
    _c(
        "shop_household",
        "count",
        "hardware, DIY, furniture, electronics, garden",
        (
            "shop",
            (
                "hardware doityourself furniture electronics garden_centre interior_decoration "
                "kitchen houseware appliance bed paint trade florist"
            ),
        ),
    ),
    _c(
        "shop_vehicle",
        "count",
        "car and bicycle shops and repair",
        ("shop", "car car_repair car_parts bicycle motorcycle tyres"),
    ),
    _c(
        "shop_personal_care",
        "count",
        "hairdressers, beauty, chemists, opticians",
        (
            "shop",
            (
                "hairdresser beauty cosmetics chemist optician massage tattoo perfumery "
                "hearing_aids medical_supply"
            ),
        ),
    ),
    _c(
        "shop_leisure_media",
        "count",
        "books, sports, toys, gifts, phones, computers",
        (
            "shop",
            (
                "books sports toys music video gift art photo stationery newsagent outdoor games "
                "computer mobile_phone"
            ),
        ),
    ),
    _c(
        "shop_general",
        "count",
        "malls, department stores, general and second-hand",
        ("shop", "mall department_store general variety_store second_hand charity"),
    ),
    _c("shop_any", "count", "any shop", ("shop", None)),
    # --- tourism, leisure, office, craft, healthcare, other POIs ---
    _c(
        "tourism_accommodation",
        "count",
        "hotels, guest houses, hostels, huts, camp sites",
        (
            "tourism",
            (
                "hotel motel guest_house hostel chalet apartment camp_site caravan_site "
                "alpine_hut wilderness_hut"
            ),
        ),
    ),
    _c(
        "tourism_attraction",
        "count",
        "attractions, museums, viewpoints, artworks",
        ("tourism", "attraction museum gallery viewpoint artwork zoo theme_park aquarium"),
    ),
    _c("tourism_information", "count", "tourist information", ("tourism", "information")),
    _c("tourism_any", "count", "any tourism", ("tourism", None)),
    _c(
        "leisure_sports",
        "count",
        "pitches, sports centres, stadiums, pools, fitness",
        (
            "leisure",
            (
                "pitch sports_centre stadium track fitness_centre fitness_station swimming_pool "
                "golf_course ice_rink sports_hall horse_riding"
            ),
        ),
    ),
    _c("leisure_park", "count", "parks, gardens, dog parks", ("leisure", "park garden dog_park common")),
    _c("leisure_playground", "count", "playgrounds", ("leisure", "playground")),
    _c("leisure_any", "count", "any leisure", ("leisure", None)),
    _c(
        "office_business",
        "count",
        "companies, insurance, lawyers, estate agents, consultants",
        (
            "office",
            (
                "company insurance lawyer estate_agent financial accountant tax_advisor it "
                "architect employment_agency consulting advertising_agency"
            ),
        ),
    ),
    _c(
        "office_government",
        "count",
        "government, NGOs, associations, religion",
        ("office", "government diplomatic ngo association political_party religion"),
    ),
    _c("office_any", "count", "any office", ("office", None)),
    _c("craft_any", "count", "any craft", ("craft", None)),
    _c("healthcare_any", "count", "any healthcare", ("healthcare", None)),
    _c("historic_any", "count", "any historic feature", ("historic", None)),
    _c("man_made_any", "count", "towers, masts, water works, other man-made structures", ("man_made", None)),
    _c("natural_tree", "count", "single trees", ("natural", "tree")),
    # --- public transport stops ---
    _c(
        "pt_stop_any",
        "count",
        "any public transport stop, platform or station",
        ("highway", "bus_stop"),
        ("public_transport", "platform stop_position station"),
        ("railway", "station halt tram_stop subway_entrance"),
        ("amenity", "bus_station"),
        ("aerialway", "station"),
    ),
    _c("pt_bus_stop", "count", "bus stops", ("highway", "bus_stop")),
    _c(
        "pt_rail_station",
        "count",
        "railway stations and halts",
        ("railway", "station halt"),
        ("public_transport", "station"),
    ),
    _c("pt_tram_stop", "count", "tram stops", ("railway", "tram_stop")),
    # --- street furniture of the road network ---
    _c("traffic_signals", "count", "traffic signals", ("highway", "traffic_signals")),
    _c("crossing", "count", "pedestrian crossings", ("highway", "crossing")),
    _c("level_crossing", "count", "railway level crossings", ("railway", "level_crossing crossing")),
    _c(
        "traffic_control",
        "count",
        "stop / give way signs, mini roundabouts, turning circles",
        ("highway", "stop give_way mini_roundabout turning_circle"),
    ),
    _c("traffic_calming", "count", "bumps, chicanes and other traffic calming", ("traffic_calming", None)),
    _c("street_lamp", "count", "street lamps", ("highway", "street_lamp")),
    # --- road network by class (length) ---
    _c("road_motorway_m", "length_m", "motorways and their links", ("highway", "motorway motorway_link")),
    _c("road_trunk_m", "length_m", "trunk roads and links", ("highway", "trunk trunk_link")),
    _c("road_primary_m", "length_m", "primary roads and links", ("highway", "primary primary_link")),
    _c("road_secondary_m", "length_m", "secondary roads and links", ("highway", "secondary secondary_link")),
    _c("road_tertiary_m", "length_m", "tertiary roads and links", ("highway", "tertiary tertiary_link")),
    _c("road_unclassified_m", "length_m", "unclassified roads", ("highway", "unclassified road")),
    _c("road_residential_m", "length_m", "residential streets", ("highway", "residential")),
    _c("road_living_street_m", "length_m", "living streets", ("highway", "living_street")),
    _c("road_service_m", "length_m", "service roads", ("highway", "service")),
    _c("road_pedestrian_m", "length_m", "pedestrian streets", ("highway", "pedestrian")),
    _c("road_track_m", "length_m", "agricultural / forest tracks", ("highway", "track")),
    _c(
        "path_foot_m",
        "length_m",
        "footways, paths, steps, bridleways",
        ("highway", "footway path steps bridleway corridor"),
    ),
    _c("path_cycle_m", "length_m", "cycleways", ("highway", "cycleway")),
    _c(
        "road_other_m",
        "length_m",
        "roads under construction, raceways, bus guideways",
        ("highway", "construction raceway bus_guideway escape busway"),
    ),
    # --- other networks (length) ---
    _c("rail_main_m", "length_m", "railways", ("railway", "rail")),
    _c(
        "rail_light_m",
        "length_m",
        "light rail, tram, subway, narrow gauge, funicular",
        ("railway", "light_rail tram subway narrow_gauge monorail funicular"),
    ),
    _c(
        "aerialway_m",
        "length_m",
        "cable cars, gondolas, chair and drag lifts",
        ("aerialway", "cable_car gondola chair_lift drag_lift t-bar j-bar platter rope_tow mixed_lift"),
    ),
    _c("waterway_river_m", "length_m", "rivers and canals", ("waterway", "river canal")),
    _c("waterway_stream_m", "length_m", "streams, ditches, drains", ("waterway", "stream ditch drain brook")),
    _c("power_line_m", "length_m", "power lines", ("power", "line minor_line cable")),
    _c(
        "barrier_line_m",
        "length_m",
        "walls, fences, hedges",
        ("barrier", "wall fence hedge retaining_wall city_wall"),
    ),
    # --- buildings by type (count at centroid; footprints at centroid) ---
    _c("building_count", "count", "any building", ("building", None)),
    _c(
        "building_residential",
        "count",
        "houses, apartments, residential buildings",
        (
            "building",
            (
                "house residential apartments detached semidetached_house terrace bungalow "
                "dormitory farm cabin"
            ),
        ),
    ),
    _c(
        "building_commercial",
        "count",
        "commercial, retail, office and hotel buildings",
        ("building", "commercial retail office supermarket kiosk hotel"),
    ),
    _c(
        "building_industrial",
        "count",
        "industrial buildings and warehouses",
        ("building", "industrial warehouse manufacture factory hangar storage_tank"),
    ),
    _c(
        "building_agricultural",
        "count",
        "barns, stables, greenhouses",
        ("building", "barn farm_auxiliary greenhouse stable cowshed sty"),
    ),
    _c(
        "building_public",
        "count",
        "schools, hospitals, churches, civic buildings, stations",
        (
            "building",
            (
                "public civic school university college kindergarten hospital church chapel "
                "cathedral mosque temple religious train_station government fire_station sports_hall"
            ),
        ),
    ),
    _c(
        "building_outbuilding",
        "count",
        "garages, sheds, carports, roofs, huts",
        ("building", "garage garages shed carport roof hut service transformer_tower"),
    ),
    _c("building_footprint_m2", "area_m2", "footprint area of any building", ("building", None)),
    _c(
        "building_residential_footprint_m2",
        "area_m2",
        "footprint area of residential buildings",
        (
            "building",
            (
                "house residential apartments detached semidetached_house terrace bungalow "
                "dormitory farm cabin"
            ),
        ),
    ),
    _c(
        "building_nonresidential_footprint_m2",
        "area_m2",
        "footprint area of commercial, industrial and public buildings",
        (
            "building",
            (
                "commercial retail office supermarket kiosk hotel industrial warehouse manufacture "
                "factory hangar public civic school university college kindergarten hospital church "
                "chapel cathedral mosque temple religious train_station government"
            ),
        ),
    ),
    # --- land use and natural cover (area spread over the cells a polygon covers) ---
    _c("landuse_residential_m2", "area_m2", "residential land", ("landuse", "residential"), spread=True),
    _c(
        "landuse_commercial_m2",
        "area_m2",
        "commercial and retail land",
        ("landuse", "commercial retail"),
        spread=True,
    ),
    _c(
        "landuse_industrial_m2",
        "area_m2",
        "industrial, railway and port land",
        ("landuse", "industrial railway port"),
        spread=True,
    ),
    _c(
        "landuse_farmland_m2",
        "area_m2",
        "farmland, orchards, vineyards, allotments",
        ("landuse", "farmland farmyard orchard vineyard greenhouse_horticulture allotments plant_nursery"),
        spread=True,
    ),
    _c(
        "landuse_grass_m2",
        "area_m2",
        "meadows, grass, village greens, recreation grounds",
        ("landuse", "meadow grass village_green recreation_ground greenfield"),
        spread=True,
    ),
    _c("forest_m2", "area_m2", "forest and wood", ("landuse", "forest"), ("natural", "wood"), spread=True),
    _c(
        "landuse_construction_m2",
        "area_m2",
        "construction, brownfield, quarries, landfill",
        ("landuse", "construction brownfield quarry landfill"),
        spread=True,
    ),
    _c(
        "landuse_cemetery_m2",
        "area_m2",
        "cemeteries and religious land",
        ("landuse", "cemetery religious"),
        ("amenity", "grave_yard"),
        spread=True,
    ),
    _c(
        "water_m2",
        "area_m2",
        "water bodies and reservoirs",
        ("natural", "water"),
        ("landuse", "reservoir basin"),
        ("waterway", "riverbank"),
        spread=True,
    ),
    _c(
        "natural_scrub_grassland_m2",
        "area_m2",
        "grassland, scrub, heath",
        ("natural", "grassland scrub heath fell"),
        spread=True,
    ),
    _c(
        "natural_bare_m2",
        "area_m2",
        "bare rock, scree, glaciers, sand",
        ("natural", "bare_rock scree shingle glacier sand rock"),
        spread=True,
    ),
    _c("natural_wetland_m2", "area_m2", "wetland", ("natural", "wetland"), spread=True),
    _c(
        "park_m2",
        "area_m2",
        "parks, gardens, nature reserves",
        ("leisure", "park garden nature_reserve"),
        spread=True,
    ),
    _c(
        "sport_area_m2",
        "area_m2",
        "pitches, sports centres, stadiums, golf courses",
        ("leisure", "pitch sports_centre stadium golf_course track"),
        spread=True,
    ),
    _c("parking_area_m2", "area_m2", "surface parking areas", ("amenity", "parking"), spread=True),
)

CHANNEL_NAMES: tuple[str, ...] = tuple(c.name for c in CHANNELS)

# Tag keys of any rule: the C++ KeyFilter passes only objects having one of them.
FILTER_KEYS: tuple[str, ...] = tuple(sorted({k for c in CHANNELS for k, _ in c.rules}))

# Lookup tables are per geometry: nodes feed count channels, ways length channels, areas count and area
# channels. Each maps key -> value -> channel indices; WILDCARD holds the channels of `values=None` rules.
WILDCARD = "*"
Lookup = dict[str, dict[str, tuple[int, ...]]]


def _compile(kinds: frozenset[str]) -> Lookup:
    acc: dict[str, dict[str, set[int]]] = {}
    for i, ch in enumerate(CHANNELS):
        if ch.kind not in kinds:
            continue
        for key, values in ch.rules:
            per_value = acc.setdefault(key, {})
            for v in values if values is not None else (WILDCARD,):
                per_value.setdefault(v, set()).add(i)
    return {k: {v: tuple(sorted(s)) for v, s in d.items()} for k, d in acc.items()}


NODE_LOOKUP: Lookup = _compile(frozenset({"count"}))
WAY_LOOKUP: Lookup = _compile(frozenset({"length_m"}))
AREA_LOOKUP: Lookup = _compile(frozenset({"count", "area_m2"}))
WAY_KEYS: tuple[str, ...] = tuple(sorted(WAY_LOOKUP))
AREA_KEYS: tuple[str, ...] = tuple(sorted(AREA_LOOKUP))


def match(tags, lookup: Lookup) -> list[int]:
    """Channel indices (sorted, unique) that an iterable of `(key, value)` tags feeds under `lookup`."""
    found: set[int] = set()
    for k, v in tags:
        per_value = lookup.get(k)
        if per_value is None:
            continue
        hit = per_value.get(v)
        if hit:
            found.update(hit)
        if v not in NEGATIVE_VALUES:
            hit = per_value.get(WILDCARD)
            if hit:
                found.update(hit)
    return sorted(found)


def markdown() -> str:
    """TAXONOMY.md: the channel table generated from CHANNELS."""
    reserved = ", ".join(f"`{k}*`" if k.endswith(":") else f"`{k}`" for k in RESERVED_TARGET_KEYS)
    lines = [
        "# Taxonomy (generated by `python -m s2vec_core.taxonomy`; do not edit)",
        "",
        f"Version `{TAXONOMY_VERSION}`, {len(CHANNELS)} channels. Kinds: `count` (points and areas, one per",
        "object at its point / centroid cell), `length_m` (ways, length split over the cells they cross),",
        "`area_m2` (areas; *spread* = area spread over the covered cells, otherwise at the centroid cell).",
        "A rule `key=*` matches any value except `no`. An object feeds every channel one of its tags",
        f"matches. Never used, because they are evaluation targets: {reserved}.",
        "",
        "| # | channel | kind | tags | description |",
        "|---|---|---|---|---|",
    ]
    for i, ch in enumerate(CHANNELS):
        kind = ch.kind + (" (spread)" if ch.spread else "")
        rules = "<br>".join(f"`{k}`=" + ("*" if v is None else ", ".join(v)) for k, v in ch.rules)
        lines.append(f"| {i} | `{ch.name}` | {kind} | {rules} | {ch.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
