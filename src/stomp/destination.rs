//! STOMP destinations and the rooms they name: `/topic/<path>` is the room
//! `<path>` with each `/` replaced by `.`, and an application destination
//! of `RELAY_STOMP_APP_ROUTES` names the room its template builds from
//! fields of the JSON body (`/app/chat/message=chat.room.{roomId}`), so a
//! front end written for a Spring `@MessageMapping` needs no server.

use std::fmt;

use crate::protocol::RoomName;

/// The prefix of destinations that are rooms.
pub const TOPIC_PREFIX: &str = "/topic/";

/// The room a `/topic/...` destination names.
///
/// # Errors
/// What is wrong with the destination, and what to send instead.
pub fn topic_room(destination: &str) -> Result<RoomName, String> {
    let Some(path) = destination.strip_prefix(TOPIC_PREFIX) else {
        return Err(format!(
            "destination {destination:?} is not a room: subscribe and send to /topic/<room path> (such as /topic/chat/room/42), or send to an application destination of RELAY_STOMP_APP_ROUTES"
        ));
    };
    RoomName::parse(&path.replace('/', ".")).map_err(|error| {
        format!("destination {destination:?} names no valid room ({error}); each / of the path becomes a .")
    })
}

/// One application route: a destination and the room template of its SENDs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppRoute {
    destination: String,
    template: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// The application routes of a node (`RELAY_STOMP_APP_ROUTES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppRoutes {
    routes: Vec<AppRoute>,
}

impl AppRoutes {
    /// Parses `destination=template` pairs, comma-separated; an empty text
    /// gives no routes.
    ///
    /// # Errors
    /// What is wrong with a pair, for the operator.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut routes = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let Some((destination, template)) = pair.split_once('=') else {
                return Err(format!(
                    "{pair:?} has no '='; write destination=room-template, such as /app/chat/message=chat.room.{{roomId}}"
                ));
            };
            let (destination, template) = (destination.trim(), template.trim());
            if !destination.starts_with('/') || destination.starts_with(TOPIC_PREFIX) {
                return Err(format!(
                    "{destination:?} is not an application destination: it must start with / and not with /topic/ (those are rooms already)"
                ));
            }
            if routes.iter().any(|route: &AppRoute| route.destination == destination) {
                return Err(format!(
                    "{destination:?} is routed twice; give each destination one template"
                ));
            }
            routes.push(AppRoute {
                destination: destination.to_owned(),
                template: parse_template(template)?,
            });
        }
        Ok(Self { routes })
    }

    /// Whether `destination` is one of the routes.
    #[must_use]
    pub fn routes(&self, destination: &str) -> bool {
        self.routes.iter().any(|route| route.destination == destination)
    }

    /// The room a SEND to `destination` with this JSON body goes to;
    /// `None` when `destination` is no route.
    ///
    /// # Errors
    /// What the body lacks, for the client.
    #[must_use]
    pub fn room_for(&self, destination: &str, body: &str) -> Option<Result<RoomName, String>> {
        let route = self.routes.iter().find(|route| route.destination == destination)?;
        Some(route.room_for(body))
    }
}

impl AppRoute {
    fn room_for(&self, body: &str) -> Result<RoomName, String> {
        let fields = || -> Result<serde_json::Map<String, serde_json::Value>, String> {
            match serde_json::from_str::<serde_json::Value>(body) {
                Ok(serde_json::Value::Object(fields)) => Ok(fields),
                _ => Err(format!(
                    "a SEND to {} needs a JSON object body, whose fields name the room ({})",
                    self.destination, self
                )),
            }
        };
        let mut object = None;
        let mut room = String::new();
        for piece in &self.template {
            match piece {
                Piece::Text(text) => room.push_str(text),
                Piece::Field(name) => {
                    if object.is_none() {
                        object = Some(fields()?);
                    }
                    let value = object.as_ref().and_then(|fields| fields.get(name));
                    match value {
                        Some(serde_json::Value::String(text)) => room.push_str(text),
                        Some(serde_json::Value::Number(number)) => room.push_str(&number.to_string()),
                        _ => {
                            return Err(format!(
                                "the body has no string or number field {name:?}, which names the room of a SEND to {} ({})",
                                self.destination, self
                            ));
                        }
                    }
                }
            }
        }
        RoomName::parse(&room).map_err(|error| {
            format!(
                "a SEND to {} names the room {room:?}, which is not valid ({error})",
                self.destination
            )
        })
    }
}

impl fmt::Display for AppRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for piece in &self.template {
            match piece {
                Piece::Text(text) => f.write_str(text)?,
                Piece::Field(name) => write!(f, "{{{name}}}")?,
            }
        }
        Ok(())
    }
}

fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let Some(end) = rest.find('}') else {
                    return Err(format!("the room template {template:?} opens a {{ it never closes"));
                };
                let name = &rest[1..end];
                if name.is_empty() || name.contains('{') {
                    return Err(format!(
                        "the room template {template:?} has an empty or nested field; write {{fieldName}}"
                    ));
                }
                pieces.push(Piece::Field(name.to_owned()));
                rest = &rest[end + 1..];
            }
            found => {
                let end = found.unwrap_or(rest.len());
                let text = &rest[..end];
                if text.contains('}') {
                    return Err(format!("the room template {template:?} closes a }} it never opened"));
                }
                pieces.push(Piece::Text(text.to_owned()));
                rest = &rest[end..];
            }
        }
    }
    if pieces.is_empty() {
        return Err("a route has an empty room template; write one such as chat.room.{roomId}".to_owned());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_path_is_the_room_with_dots() {
        assert_eq!(topic_room("/topic/chat/room/42").unwrap().as_str(), "chat.room.42");
        assert_eq!(topic_room("/topic/lobby").unwrap().as_str(), "lobby");
        assert!(topic_room("/queue/lobby").unwrap_err().contains("/topic/"));
        assert!(topic_room("/topic/").is_err());
        assert!(topic_room("/topic/a b").unwrap_err().contains("valid room"));
    }

    #[test]
    fn an_app_route_builds_the_room_from_body_fields() {
        let routes = AppRoutes::parse("/app/chat/message=chat.room.{roomId}, /app/dm=dm.{from}.{to}").unwrap();
        assert!(routes.routes("/app/chat/message"));
        assert!(!routes.routes("/app/other"));
        let room = routes
            .room_for("/app/chat/message", r#"{"roomId":"42","message":"hi"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(room.as_str(), "chat.room.42");
        let numeric = routes
            .room_for("/app/chat/message", r#"{"roomId":7}"#)
            .unwrap()
            .unwrap();
        assert_eq!(numeric.as_str(), "chat.room.7");
        let dm = routes
            .room_for("/app/dm", r#"{"from":"ann","to":"bob"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(dm.as_str(), "dm.ann.bob");
        let missing = routes
            .room_for("/app/chat/message", r#"{"message":"hi"}"#)
            .unwrap()
            .unwrap_err();
        assert!(missing.contains("\"roomId\""), "{missing}");
        let not_json = routes.room_for("/app/chat/message", "hello").unwrap().unwrap_err();
        assert!(not_json.contains("JSON object"), "{not_json}");
        let bad_room = routes
            .room_for("/app/chat/message", r#"{"roomId":"a b"}"#)
            .unwrap()
            .unwrap_err();
        assert!(bad_room.contains("not valid"), "{bad_room}");
        assert!(routes.room_for("/app/unknown", "{}").is_none());
    }

    #[test]
    fn a_bad_route_is_refused_with_what_to_write() {
        assert_eq!(AppRoutes::parse("").unwrap(), AppRoutes::default());
        assert!(AppRoutes::parse("/app/x").unwrap_err().contains("'='"));
        assert!(AppRoutes::parse("app/x=room").unwrap_err().contains("start with /"));
        assert!(AppRoutes::parse("/topic/x=room").unwrap_err().contains("/topic/"));
        assert!(
            AppRoutes::parse("/app/x=room.{id")
                .unwrap_err()
                .contains("never closes")
        );
        assert!(
            AppRoutes::parse("/app/x=room.id}")
                .unwrap_err()
                .contains("never opened")
        );
        assert!(AppRoutes::parse("/app/x=room.{}").unwrap_err().contains("empty"));
        assert!(AppRoutes::parse("/app/x=").unwrap_err().contains("empty room template"));
        assert!(AppRoutes::parse("/app/x=a,/app/x=b").unwrap_err().contains("twice"));
    }
}
