//! Deterministic generators for a realistic tenant and a matching org.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::creds;
use super::graph::GraphTenant;
use super::salesforce::{SfOrg, json_map};

/// Departments of the generated tenant; the first four have a Salesforce
/// access group of their own.
pub const DEPARTMENTS: &[&str] = &[
    "Sales",
    "Support",
    "Marketing",
    "Finance",
    "Engineering",
    "Operations",
    "HR",
];
/// Groups of the generated tenant.
pub const GROUPS: &[&str] = &[
    "SF-Admins",
    "SF-Sales",
    "SF-Support",
    "SF-Marketing",
    "All Staff",
    "Contractors",
];
/// The verified domain users get their UPNs in.
pub const DOMAIN: &str = "contoso-sim.com";

const FIRST: &[(&str, &str)] = &[
    ("Adele", "adele"),
    ("Alex", "alex"),
    ("Zoë", "zoe"),
    ("José", "jose"),
    ("Łukasz", "lukasz"),
    ("Søren", "soren"),
    ("Megan", "megan"),
    ("Nestor", "nestor"),
    ("Patti", "patti"),
    ("Pradeep", "pradeep"),
    ("Isaiah", "isaiah"),
    ("Lynne", "lynne"),
    ("Grady", "grady"),
    ("Henrietta", "henrietta"),
    ("Joni", "joni"),
    ("Lee", "lee"),
    ("Miriam", "miriam"),
    ("Diego", "diego"),
    ("Émilie", "emilie"),
    ("Björn", "bjorn"),
    ("Yuki", "yuki"),
    ("Aoife", "aoife"),
    ("Chidi", "chidi"),
    ("Ingrid", "ingrid"),
    ("Mateus", "mateus"),
    ("Priya", "priya"),
];
const LAST: &[(&str, &str)] = &[
    ("Vance", "vance"),
    ("Wilber", "wilber"),
    ("Bowen", "bowen"),
    ("Fernández", "fernandez"),
    ("Kowalski", "kowalski"),
    ("Jørgensen", "jorgensen"),
    ("Sullivan", "sullivan"),
    ("Fuller", "fuller"),
    ("Gupta", "gupta"),
    ("Langer", "langer"),
    ("Robinson", "robinson"),
    ("Archie", "archie"),
    ("Sherman", "sherman"),
    ("Cruz", "cruz"),
    ("Graham", "graham"),
    ("Müller", "muller"),
    ("O'Brien", "obrien"),
    ("Tanaka", "tanaka"),
    ("Dubois", "dubois"),
    ("Okafor", "okafor"),
    ("Silva", "silva"),
    ("Nowak", "nowak"),
    ("Lindqvist", "lindqvist"),
    ("Rossi", "rossi"),
];
const LANGS: &[Option<&str>] = &[
    Some("en-US"),
    Some("en-US"),
    Some("en-US"),
    Some("en-GB"),
    Some("de-DE"),
    Some("fr-FR"),
    Some("ja-JP"),
    Some("es-ES"),
    Some("nl-NL"),
    None,
];
const TITLES: &[&str] = &[
    "Associate",
    "Specialist",
    "Manager",
    "Senior Manager",
    "Director",
    "Analyst",
];

fn uuid(rng: &mut StdRng) -> String {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A generated tenant of `n` users: about 3% disabled, 4% guests, names
/// with diacritics, several languages, department groups and admins.
pub fn tenant(n: usize, seed: u64) -> GraphTenant {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = GraphTenant::default();
    let group_ids: Vec<String> = GROUPS
        .iter()
        .map(|g| {
            let id = uuid(&mut rng);
            t.create_group(&id, g)
        })
        .collect();
    let mut managers: Vec<String> = Vec::new();
    for i in 0..n {
        let (first, fa) = FIRST[rng.random_range(0..FIRST.len())];
        let (last, la) = LAST[rng.random_range(0..LAST.len())];
        let dept = DEPARTMENTS[i % DEPARTMENTS.len()];
        let guest = i % 25 == 24;
        let disabled = i % 33 == 32;
        let id = uuid(&mut rng);
        let (upn, mail, user_type) = if guest {
            (
                format!("{fa}.{la}{i}_fabrikam.com#EXT#@{}", creds::TENANT),
                format!("{fa}.{la}{i}@fabrikam.com"),
                "Guest",
            )
        } else {
            (
                format!("{fa}.{la}{i}@{DOMAIN}"),
                format!("{fa}.{la}{i}@{DOMAIN}"),
                "Member",
            )
        };
        let mut p = Map::new();
        p.insert("userPrincipalName".into(), json!(upn));
        p.insert("mail".into(), json!(mail));
        p.insert("givenName".into(), json!(first));
        p.insert("surname".into(), json!(last));
        p.insert("displayName".into(), json!(format!("{first} {last}")));
        p.insert("department".into(), json!(dept));
        p.insert(
            "jobTitle".into(),
            json!(format!(
                "{dept} {}",
                TITLES[rng.random_range(0..TITLES.len())]
            )),
        );
        p.insert(
            "employeeId".into(),
            if guest {
                Value::Null
            } else {
                json!(format!("{:06}", 100000 + i))
            },
        );
        p.insert(
            "businessPhones".into(),
            json!([format!("+1 425 555 {:04}", i % 10000)]),
        );
        p.insert("userType".into(), json!(user_type));
        p.insert("accountEnabled".into(), json!(!disabled));
        if let Some(l) = LANGS[rng.random_range(0..LANGS.len())] {
            p.insert("preferredLanguage".into(), json!(l));
        }
        // create_user only fails on duplicate UPNs, which the index prevents.
        let _ = t.create_user(&id, p);
        if i % 10 == 0 {
            managers.push(id.clone());
        } else if let Some(m) = managers.last() {
            let _ = t.set_manager(&id, Some(m));
        }
        let dept_group = match dept {
            "Sales" => Some(1),
            "Support" => Some(2),
            "Marketing" => Some(3),
            _ => None,
        };
        if let Some(g) = dept_group {
            let _ = t.set_membership(&group_ids[g], &id, true);
        }
        if i % 97 == 5 {
            let _ = t.set_membership(&group_ids[0], &id, true);
        }
        if guest {
            let _ = t.set_membership(&group_ids[5], &id, true);
        } else {
            let _ = t.set_membership(&group_ids[4], &id, true);
        }
    }
    t
}

/// An org with licences, profiles, the integration user and a few users
/// that already exist for tenant users (matched by Federation ID or by
/// Username) plus one that belongs to nobody in the tenant; with
/// `existing_share` > 0, that share of the other enabled members too.
pub fn org(tenant: &GraphTenant, _seed: u64, existing_share: f64) -> SfOrg {
    let mut org = SfOrg::new();
    let users = tenant.users().count() as u64;
    let sf_lic = org.insert_raw("UserLicense", json_map(json!({"Name": "Salesforce", "LicenseDefinitionKey": "SFDC", "TotalLicenses": users + 20, "UsedLicenses": 0, "Status": "Active"})));
    let chatter = org.insert_raw("UserLicense", json_map(json!({"Name": "Chatter Free", "LicenseDefinitionKey": "PID_Chatter", "TotalLicenses": 5000 + users, "UsedLicenses": 0, "Status": "Active"})));
    org.insert_raw("UserLicense", json_map(json!({"Name": "Salesforce Platform", "LicenseDefinitionKey": "AUL", "TotalLicenses": 10, "UsedLicenses": 0, "Status": "Active"})));
    let admin = org.insert_raw(
        "Profile",
        json_map(json!({"Name": "System Administrator", "UserLicenseId": sf_lic})),
    );
    let standard = org.insert_raw(
        "Profile",
        json_map(json!({"Name": "Standard User", "UserLicenseId": sf_lic})),
    );
    org.insert_raw(
        "Profile",
        json_map(json!({"Name": "Read Only", "UserLicenseId": sf_lic})),
    );
    let chatter_free = org.insert_raw(
        "Profile",
        json_map(json!({"Name": "Chatter Free User", "UserLicenseId": chatter})),
    );
    for (name, label) in [
        ("Sales_Cloud_User", "Sales Cloud User"),
        ("Service_Cloud_User", "Service Cloud User"),
        ("Reports_Builder", "Reports Builder"),
        ("Marketing_Tools", "Marketing Tools"),
    ] {
        org.insert_raw(
            "PermissionSet",
            json_map(json!({"Name": name, "Label": label, "IsOwnedByProfile": false})),
        );
    }
    // A permission set licence with few seats and a permission set that
    // needs it; a permission set group; queues.
    let psl = org.insert_raw("PermissionSetLicense", json_map(json!({"DeveloperName": "EinsteinAnalyticsPlusPsl", "MasterLabel": "CRM Analytics Plus", "TotalLicenses": 3, "UsedLicenses": 0, "Status": "Active"})));
    org.insert_raw(
        "PermissionSet",
        json_map(json!({"Name": "CRM_Analytics_Plus_User", "Label": "CRM Analytics Plus User", "IsOwnedByProfile": false, "LicenseId": psl})),
    );
    org.add_permission_set_group("Sales_Bundle", "Sales Bundle");
    org.seed_queue("Support Queue", &["Case", "Lead"]);
    org.seed_queue("Sales Queue", &["Lead"]);
    for (name, dev) in [
        ("CEO", "CEO"),
        ("Sales Rep", "Sales_Rep"),
        ("Support Agent", "Support_Agent"),
    ] {
        org.insert_raw(
            "UserRole",
            json_map(json!({"Name": name, "DeveloperName": dev})),
        );
    }
    // Each profile owns a permission set (never assigned directly), and
    // the org has a few that packs can grant.
    let profile_ids: Vec<(String, String)> = org
        .rows("Profile")
        .map(|p| {
            (
                p["Id"].as_str().unwrap_or_default().to_string(),
                p["Name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (pid, pname) in profile_ids {
        let name = format!("X00e_{}", pname.replace(' ', "_"));
        let admin = pname == "System Administrator";
        let api = pname != "Chatter Free User";
        org.insert_raw("PermissionSet", json_map(json!({"Name": name, "Label": pname, "IsOwnedByProfile": true, "ProfileId": pid, "PermissionsManageUsers": admin, "PermissionsViewSetup": admin, "PermissionsApiEnabled": api, "PermissionsUpdateWithInactiveOwner": admin})));
    }
    let base = |username: &str, first: &str, last: &str, email: &str, profile: &str| {
        json_map(
            json!({"Username": username, "FirstName": first, "LastName": last, "Email": email, "Alias": username.chars().take(8).collect::<String>(), "TimeZoneSidKey": "America/Los_Angeles", "LocaleSidKey": "en_US", "EmailEncodingKey": "UTF-8", "LanguageLocaleKey": "en_US", "ProfileId": profile, "IsActive": true}),
        )
    };
    org.integration_user_id = org.insert_raw(
        "User",
        base(
            creds::SF_INTEGRATION_USERNAME,
            "Provisor",
            "Integration",
            "integration@provisor-sim.example",
            &admin,
        ),
    );
    let mut hand = base(
        "it.admin@contoso-sim.com.prod",
        "Ivy",
        "Admin",
        "it.admin@contoso-sim.com",
        &admin,
    );
    hand.insert("CommunityNickname".into(), json!("it.admin"));
    org.insert_raw("User", hand);
    // A leftover account nobody in the tenant owns (an orphan).
    org.insert_raw(
        "User",
        base(
            "former.contractor@contoso-sim.com",
            "Former",
            "Contractor",
            "former.contractor@contoso-sim.com",
            &chatter_free,
        ),
    );

    // Pre-existing users for some tenant users: the first two matched by
    // Federation ID, the next three by Username only, with stale fields.
    let members: Vec<_> = tenant
        .users()
        .filter(|u| {
            u.removed.is_none()
                && u.props.get("userType").and_then(Value::as_str) == Some("Member")
                && u.props.get("accountEnabled") == Some(&Value::Bool(true))
        })
        .collect();
    // Every `stride`-th further member exists already, spread evenly.
    let stride = if existing_share > 0.0 {
        (1.0 / existing_share.min(1.0)).round().max(1.0) as usize
    } else {
        usize::MAX
    };
    let chosen = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 5 || (i - 5) % stride == 0 && stride != usize::MAX);
    for (i, u) in chosen {
        let s = |k: &str| {
            u.props
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let upn = s("userPrincipalName");
        let profile = if i % 2 == 0 { &standard } else { &chatter_free };
        let mut row = base(&upn, &s("givenName"), &s("surname"), &s("mail"), profile);
        if i < 2 || (i >= 5 && i % 2 == 0) {
            row.insert("FederationIdentifier".into(), json!(upn));
        } else {
            // Stale data the sync must correct.
            row.insert(
                "FirstName".into(),
                json!(format!("{} (old)", s("givenName"))),
            );
        }
        org.insert_raw("User", row);
    }
    org
}
